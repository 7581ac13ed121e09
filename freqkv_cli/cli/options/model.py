"""The model group: which model, on which device, in which precision, and loading it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from .flags import option
from .taking import Options

if TYPE_CHECKING:  # torch comes with them: not for --help
    from ...models.loading import LoadedModel
    from ..output import Readout

ModelOpt = Annotated[
    str,
    option(
        "--model",
        "-m",
        envvar="FREQKV_MODEL",
        help="'default' (embedded SmolLM2-135M-Instruct), a Hugging Face model folder, a .gguf file, "
        "or a LoRA adapter folder.",
    ),
]
BaseOpt = Annotated[
    str | None,
    option(
        "--base",
        metavar="MODEL",
        show_default="the adapter's own",
        help="Base model for a LoRA adapter (overrides its config).",
    ),
]
UntunedOpt = Annotated[
    bool,
    option(
        "--untuned",
        envvar="FREQKV_UNTUNED",
        help="With the default model: the plain SmolLM2 weights, without the shipped FreqKV-tuned adapter "
        "(for comparison).",
    ),
]
DeviceOpt = Annotated[str, option("--device", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps.")]
DtypeOpt = Annotated[
    str, option("--dtype", help="auto (bf16 on CUDA, float32 on CPU), float32, bfloat16, float16.")
]
TrustOpt = Annotated[
    bool,
    option("--trust-remote-code", help="Allow a model folder's own Python code to run (off by default)."),
]

QuantizeOpt = Annotated[
    str | None,
    option(
        "--quantize",
        help="Weight-only quantization through bitsandbytes: int8 (LLM.int8) or int4 (NF4); about a "
        "half / a quarter of the 16-bit weights. Kept quantized under FREQKV_HOME for the next load; "
        "with finetune, the base the adapter is trained over (QLoRA).",
    ),
]
DeviceMapOpt = Annotated[
    str | None,
    option(
        "--device-map",
        help="Spread the model over devices (accelerate): auto, balanced, sequential, or a JSON file "
        "of module -> device (0, cuda:1, cpu, disk). Each layer's cache stays on its layer's device.",
    ),
]
MaxMemoryOpt = Annotated[
    str | None,
    option("--max-memory", help="With --device-map: a cap per device, e.g. 0=20GiB,cpu=64GiB."),
]


@dataclass
class ModelChoice:
    """Which model, on which device, in which precision."""

    model: ModelOpt = "default"
    base: BaseOpt = None
    untuned: UntunedOpt = False
    device: DeviceOpt = "auto"
    dtype: DtypeOpt = "auto"
    trust_remote_code: TrustOpt = False
    quantize: QuantizeOpt = None
    device_map: DeviceMapOpt = None
    max_memory: MaxMemoryOpt = None

    def load(self, readout: Readout) -> LoadedModel:
        # Looked up on the package, where load_model has always been replaced (tests do).
        from . import load_model

        with readout.status(f"loading model {self.model} ..."):
            return load_model(
                self.model,
                device=self.device,
                dtype=self.dtype,
                base=self.base,
                trust_remote_code=self.trust_remote_code,
                untuned=self.untuned,
                quantize=self.quantize,
                device_map=self.device_map,
                max_memory=self.max_memory,
            )


MODEL = Options(ModelChoice)
