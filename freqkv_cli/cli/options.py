"""Options shared by the commands, and turning them into a model, a policy and a sampler."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated

import typer

from ..cache.policy import POLICIES, SELECTORS, CachePolicy
from ..engine.sampling import Sampler
from ..errors import UsageError
from ..models.loading import LoadedModel
from ..sizes import parse_size

MODEL_PANEL = "Model and cache"
OUTPUT_PANEL = "Output"
INPUT_PANEL = "Input"

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        envvar="FREQKV_MODEL",
        rich_help_panel=MODEL_PANEL,
        help="'default' (embedded SmolLM2-135M-Instruct), a Hugging Face model folder, a .gguf file, "
        "or a LoRA adapter folder.",
    ),
]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base", rich_help_panel=MODEL_PANEL, help="Base model for a LoRA adapter (overrides its config)."
    ),
]
UntunedOpt = Annotated[
    bool,
    typer.Option(
        "--untuned",
        envvar="FREQKV_UNTUNED",
        rich_help_panel=MODEL_PANEL,
        help="With the default model: the plain SmolLM2 weights, without the shipped FreqKV-tuned adapter "
        "(for comparison).",
    ),
]
WindowOpt = Annotated[
    str | None,
    typer.Option(
        "--window",
        "-w",
        rich_help_panel=MODEL_PANEL,
        help="Cache window N per layer, e.g. 1024, 4k "
        "[the checkpoint's freqkv.json, else min(4k, model window)].",
    ),
]
CtxOpt = Annotated[
    str | None,
    typer.Option(
        "--ctx",
        "-c",
        rich_help_panel=MODEL_PANEL,
        help="Most tokens the session may hold in all (document + conversation), e.g. 32k [no limit].",
    ),
]
SinkOpt = Annotated[
    int | None, typer.Option("--sink", rich_help_panel=MODEL_PANEL, help="Sink tokens S [4].")
]
RecentOpt = Annotated[
    int | None, typer.Option("--recent", rich_help_panel=MODEL_PANEL, help="Recent tokens R kept exact [0].")
]
RatioOpt = Annotated[
    float | None,
    typer.Option("--ratio", rich_help_panel=MODEL_PANEL, help="Share r of the span kept, 0<r<1 [0.5]."),
]
ExactOpt = Annotated[
    float | None,
    typer.Option(
        "--exact",
        rich_help_panel=MODEL_PANEL,
        help="hybrid cache: share of the window kept for exact, selected tokens, 0<e<1 [0.25].",
    ),
]
RereadOpt = Annotated[
    int,
    typer.Option(
        "--reread",
        min=0,
        rich_help_panel=MODEL_PANEL,
        help="hybrid cache: quote this many of the passages the question kept exact again just "
        "before the question, with the text around them (0: off) [8].",
    ),
]
SelectOpt = Annotated[
    str | None,
    typer.Option(
        "--select",
        rich_help_panel=MODEL_PANEL,
        help="hybrid cache: how exact tokens are chosen: attention (the question's, through the "
        "model's retrieval heads; none without a question), keynorm, surprise [attention].",
    ),
]
CacheOpt = Annotated[
    str, typer.Option("--cache", rich_help_panel=MODEL_PANEL, help=f"Cache policy: {', '.join(POLICIES)}.")
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", rich_help_panel=MODEL_PANEL, help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps."
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        rich_help_panel=MODEL_PANEL,
        help="auto (bf16 on CUDA, float32 on CPU), float32, bfloat16, float16.",
    ),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        rich_help_panel=MODEL_PANEL,
        help="Allow a model folder's own Python code to run (off by default).",
    ),
]
MaxNewOpt = Annotated[
    int,
    typer.Option(
        "--max-new-tokens", "-n", min=1, rich_help_panel=OUTPUT_PANEL, help="Longest answer, in tokens."
    ),
]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", "-t", min=0.0, rich_help_panel=OUTPUT_PANEL, help="0 = greedy.")
]
TopPOpt = Annotated[
    float, typer.Option("--top-p", rich_help_panel=OUTPUT_PANEL, help="Nucleus sampling mass (0, 1].")
]
RepetitionOpt = Annotated[
    float,
    typer.Option(
        "--repetition-penalty", rich_help_panel=OUTPUT_PANEL, help="1 = off; >1 discourages repeating."
    ),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", rich_help_panel=OUTPUT_PANEL, help="Seed for sampling.")
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", rich_help_panel=OUTPUT_PANEL, help="System prompt.")
]
PagesOpt = Annotated[
    str | None,
    typer.Option("--pages", rich_help_panel=INPUT_PANEL, help="PDF pages to read, e.g. 3-40 or 1,4-6."),
]
PasswordOpt = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar="FREQKV_PDF_PASSWORD",
        rich_help_panel=INPUT_PANEL,
        help="Password of an encrypted PDF.",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", rich_help_panel=OUTPUT_PANEL, help="Print one JSON object at the end instead."),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", rich_help_panel=OUTPUT_PANEL, help="No progress or statistics on stderr."),
]
ProgressOpt = Annotated[
    bool,
    typer.Option(
        "--progress", rich_help_panel=OUTPUT_PANEL, help="Show progress even when stderr is not a terminal."
    ),
]
NoColorOpt = Annotated[
    bool,
    typer.Option("--no-color", rich_help_panel=OUTPUT_PANEL, help="No colours (NO_COLOR is honoured too)."),
]


@dataclass
class ModelChoice:
    model: str = "default"
    base: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    untuned: bool = False


@dataclass
class CacheChoice:
    """Cache flags as given; None means 'from the checkpoint, else the default'."""

    kind: str = "freqkv"
    window: str | None = None
    sink: int | None = None
    recent: int | None = None
    ratio: float | None = None
    ctx: str | None = None
    exact: float | None = None
    selector: str | None = None

    def check(self) -> None:
        """Validate what can be validated before loading a model (bad values fail fast)."""
        if self.kind not in POLICIES:
            raise UsageError(f"--cache '{self.kind}' is not a policy: use one of {', '.join(POLICIES)}")
        if self.window is not None:
            parse_size(self.window)
        if self.ctx is not None:
            parse_size(self.ctx)
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise UsageError(f"--ratio {self.ratio} must be strictly between 0 and 1")
        if self.exact is not None and not 0 < self.exact < 1:
            raise UsageError(f"--exact {self.exact} must be strictly between 0 and 1")
        if self.selector is not None and self.selector not in SELECTORS:
            raise UsageError(
                f"--select '{self.selector}' is not a selector: use one of {', '.join(SELECTORS)}"
            )
        if self.sink is not None and self.sink < 0:
            raise UsageError("--sink must be 0 or more")
        if self.recent is not None and self.recent < 0:
            raise UsageError("--recent must be 0 or more")

    def ctx_tokens(self) -> int | None:
        return parse_size(self.ctx) if self.ctx is not None else None

    def policy_for(self, loaded: LoadedModel) -> CachePolicy:
        """Flags first, then the checkpoint's freqkv.json, then the defaults."""
        tuned = loaded.settings
        native = loaded.native_window or 4096

        def pick(flag: object, key: str, default: object) -> object:
            if flag is not None:
                return flag
            value = getattr(tuned, key, None) if tuned is not None else None
            return default if value is None else value

        window = (
            parse_size(self.window) if self.window is not None else pick(None, "window", min(4096, native))
        )
        return CachePolicy(
            kind=self.kind,
            window=int(window),  # type: ignore[arg-type]
            sink=int(pick(self.sink, "sink", 4)),  # type: ignore[arg-type]
            recent=int(pick(self.recent, "recent", 0)),  # type: ignore[arg-type]
            ratio=float(pick(self.ratio, "ratio", 0.5)),  # type: ignore[arg-type]
            exact=float(self.exact if self.exact is not None else 0.25),
            selector=self.selector or "attention",
        )


def make_sampler(
    temperature: float, top_p: float, seed: int | None, repetition_penalty: float = 1.0
) -> Sampler:
    return Sampler(temperature=temperature, top_p=top_p, seed=seed, repetition_penalty=repetition_penalty)


def color_disabled(no_color: bool) -> bool:
    return no_color or bool(os.environ.get("NO_COLOR"))
