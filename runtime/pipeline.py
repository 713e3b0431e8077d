"""What every family's pipeline shares: opening the bundle's parts on a backend and checking that
they carry the inputs and outputs the family needs."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

from .backends import open_backend
from .bundle import Bundle, listed_files, open_bundle
from .engines import profiles
from .errors import BundleError, EdgeVfmError, MissingExtraError, UsageError
from .registry import Registry
from .schema import Check, Problems, obj

PIPELINES: Registry[type] = Registry("family")


class Pipeline:
    """Base of the per-family pipelines. Subclasses set ``family`` and ``needs``: for each part,
    the input names and the output names the pipeline feeds and reads; and ``manifest_schema``, a
    check (:mod:`.schema`) for each top-level manifest section it reads.

    Subclasses read their manifest sections in ``setup()``, which runs after the parts are open; an
    error there (a corrupt tokenizer file, say) becomes a ``BundleError``."""

    family: ClassVar[str]
    needs: ClassVar[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]
    manifest_schema: ClassVar[dict[str, Check]] = {}
    # the sizes a pipeline always runs a part at, by the manifest's dimension names (SAM encodes one
    # image at a time: {"image_encoder": {"batch": 1}}); a backend may compile the part for them
    run_sizes: ClassVar[dict[str, dict[str, int]]] = {}

    @classmethod
    def part_options(cls, name: str, part) -> dict:
        """How this pipeline opens its part ``name`` beyond threads and device: the precision the
        backend runs it at (its compute, else its precision), its files' digest (the compiled-model
        cache's key) and the sizes it always runs at. The profile tool opens a part the same way."""
        return {"precision": part.compute or part.precision, "digest": part.digest,
                "shapes": run_shapes(part, cls.run_sizes.get(name, {}))}

    def __init__(self, bundle: Bundle, threads: int | None = None, providers: Sequence[str] | None = None,
                 low_memory: bool = False, spin_wait: bool = True):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UsageError(f"threads must be a positive integer (or None for one per core), found {threads!r}")
        problems = self.check(bundle)
        if problems:
            raise BundleError(bundle.path, problems)
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.parts = {}
        for name, part in bundle.parts.items():
            # the ranges of shapes the part runs at, for a backend that builds for them (TensorRT)
            options = dict(self.part_options(name, part), profiles=profiles(bundle.manifest, name, self.run_sizes.get(name)))
            try:
                backend = open_backend(part.backend, part.path, threads=threads, providers=providers,
                                       low_memory=low_memory, spin_wait=spin_wait, **options)
            except (UsageError, MissingExtraError):  # the caller's to fix: a device, an extra to install
                raise
            except Exception as exc:  # the backend's own errors: not a graph, an op it lacks, ...
                problems.append(f"part {name!r} ({part.path.name}): the {part.backend} backend cannot load it: "
                                f"{_first_line(exc)}")
                continue
            problems += _io_mismatch(name, part, backend)
            self.parts[name] = backend
        if problems:
            raise BundleError(bundle.path, problems)
        warn_if_saturating(bundle)
        try:
            self.setup()
        except EdgeVfmError:
            raise
        except Exception as exc:
            raise BundleError(bundle.path, [f"the {self.family} pipeline cannot use it: {_first_line(exc)}"]) from exc

    def setup(self) -> None:
        """Read the family's manifest sections and assets (tokenizer, constants)."""

    @classmethod
    def check(cls, bundle: Bundle) -> list[str]:
        """Every way the manifest falls short of what this pipeline needs (capped)."""
        problems = Problems(listed_files(bundle.manifest)).run(obj(cls.manifest_schema), bundle.manifest, "manifest")
        parts = bundle.manifest["parts"]
        for name, (inputs, outputs) in cls.needs.items():
            if name not in parts:
                problems.append(f"part {name!r} is missing: the {cls.family} pipeline needs {sorted(cls.needs)}")
                continue
            have_in = {i.get("name") for i in parts[name]["inputs"]}
            have_out = {o.get("name") for o in parts[name]["outputs"]}
            for kind, wanted, have in (("input", inputs, have_in), ("output", outputs, have_out)):
                for missing in sorted(set(wanted) - have):
                    problems.append(f"part {name!r} has no {kind} {missing!r} (it has {sorted(have)})")
        return problems or cls.check_consistency(bundle.manifest)

    @classmethod
    def variant(cls, manifest: dict) -> type:
        """The pipeline class that runs this bundle: the family's own, or, for a family whose
        bundles do different tasks (BLIP), the task's (read before the manifest is checked: a
        manifest it cannot read gets the family's class, whose checks then say what is wrong)."""
        return cls

    @classmethod
    def check_consistency(cls, manifest: dict) -> list[str]:
        """The family's rules across sections (sizes that must agree); runs once the schema holds."""
        return []

    def run(self, part: str, feeds: dict) -> dict:
        try:
            return self.parts[part].run(feeds)
        except Exception as exc:  # the backend's own error: a graph that cannot run what it declares
            raise BundleError(self.bundle.path, [f"part {part!r} failed to run: {_first_line(exc)}"]) from exc


def declared(manifest: dict, part: str, tensor: str) -> dict:
    """The manifest's entry (name, dtype, shape) for one input or output of a part."""
    entry = manifest["parts"][part]
    return next(t for t in entry["inputs"] + entry["outputs"] if t["name"] == tensor)


def mismatch(what: str, expected, found) -> list[str]:
    """One problem line when ``found`` is not ``expected``."""
    return [] if list(expected) == list(found) else [f"{what}: expected {list(expected)}, found {list(found)}"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def run_shapes(part, sizes: dict[str, int]) -> dict[str, list[int]]:
    """The inputs whose every size is known once the pipeline's ``sizes`` fill the named ones."""
    shapes = {i["name"]: [sizes.get(d, d) if isinstance(d, str) else d for d in i["shape"]] for i in part.inputs}
    return {name: shape for name, shape in shapes.items() if sizes and all(isinstance(d, int) for d in shape)}


def _io_mismatch(name: str, part, backend) -> list[str]:
    """The manifest's inputs and outputs must be the graph's: names, dtypes and fixed sizes."""
    declared_in = [i["name"] for i in part.inputs]
    declared_out = [o["name"] for o in part.outputs]
    problems = []
    if sorted(declared_in) != sorted(backend.input_names):
        problems.append(f"part {name!r}: manifest declares inputs {declared_in}, the graph has {backend.input_names}")
    if sorted(declared_out) != sorted(backend.output_names):
        problems.append(f"part {name!r}: manifest declares outputs {declared_out}, the graph has {backend.output_names}")
    for tensor in part.inputs + part.outputs:
        if tensor["name"] not in backend.signature:
            continue
        dtype, shape = backend.signature[tensor["name"]]
        fixed_differ = len(shape) != len(tensor["shape"]) or any(
            isinstance(g, int) and isinstance(d, int) and g != d for g, d in zip(shape, tensor["shape"]))
        if dtype != tensor["dtype"] or fixed_differ:
            problems.append(f"part {name!r}: manifest declares {tensor['name']!r} as {tensor['dtype']} "
                            f"{tensor['shape']}, the graph has {dtype} {shape}")
    return problems


# recipes whose parts multiplied full-range 8-bit weights by 8-bit activations before bundles said
# so (``int8_activations``); ov-int8 decoders record float activations
_FULL_RANGE_BEFORE = ("int8-static", "int8-dynamic", "ov-int8", "ov-int8-bf16", "ov-int8-plain")
_warned: set[tuple[str, ...]] = set()


def saturating_parts(bundle: Bundle) -> dict[str, str]:
    """{part: backend} of the parts whose INT8 arithmetic saturates on this CPU: full-range 8-bit
    weights meeting 8-bit activations, on x86 without VNNI (see :mod:`.cpu`)."""
    from .cpu import int8_saturates

    settings = (bundle.manifest.get("recipe") or {}).get("parts")  # what each recipe step recorded
    settings = settings if isinstance(settings, dict) else {}
    found = {}
    for name, part in bundle.manifest["parts"].items():
        step = settings.get(name) if isinstance(settings.get(name), dict) else {}
        kind = part.get("int8_activations")
        if kind is None and part.get("precision") == "int8" and step.get("recipe") in _FULL_RANGE_BEFORE \
                and step.get("activations") != "float":
            kind = "full-range"
        if kind == "full-range" and int8_saturates(part["backend"]):
            found[name] = part["backend"]
    return found


def warn_if_saturating(bundle: Bundle) -> None:
    """Warn once per bundle and parts when :func:`saturating_parts` finds any."""
    import warnings

    from .cpu import isa_label
    from .errors import SaturationWarning

    found = saturating_parts(bundle)
    key = (str(bundle.path.resolve()), *sorted(found))
    if not found or key in _warned:
        return
    _warned.add(key)
    made_on = (bundle.manifest.get("quantized_on") or {}).get("isa", "a CPU this edgevfm did not record")
    warnings.warn(f"{bundle.path}: parts {sorted(found)} multiply full-range INT8 weights by INT8 activations, "
                  f"which saturate on this CPU ({isa_label()}): accuracy is below what was measured on {made_on}. "
                  "Quantize the FP32 bundle again with this edgevfm (its INT8 recipes are saturation-safe), "
                  "or use a float or 4-bit recipe", SaturationWarning, stacklevel=4)


def load(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
         verify_hashes: bool = True, low_memory: bool = False, spin_wait: bool = True):
    """Open a bundle and return its family's pipeline (``ClipPipeline`` for a CLIP bundle).

    ``threads``: intra-op threads per part; ``providers``: ONNX Runtime execution providers (for a
    TensorRT-format bundle, ``["CPUExecutionProvider"]`` simulates it on the CPU: :mod:`.tensorrt`);
    ``low_memory``: give memory back after every run (no arena), for small devices;
    ``spin_wait``: ONNX Runtime's threads spin between operators (lowest latency for one caller);
    False where other threads share the cores (a server, many callers): they then sleep instead.
    Raises ``BundleError`` listing every problem with the bundle.
    """
    from . import families  # noqa: F401  (registers the pipelines)

    bundle = open_bundle(path, verify_hashes=verify_hashes)
    try:
        cls = PIPELINES.get(bundle.family).variant(bundle.manifest)
    except ValueError as exc:
        raise BundleError(bundle.path, [str(exc)]) from None
    return cls(bundle, threads=threads, providers=providers, low_memory=low_memory, spin_wait=spin_wait)
