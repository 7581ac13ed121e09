"""Every option of the commands, defined once, and the groups the commands take them in.

A group is a dataclass whose fields are options (``ModelChoice``: --model, --base, --device...).
``@takes(model=MODEL, cache=CACHE, ...)`` puts a group's options into a command's signature, the
one Typer reads, and hands the command the dataclass built from them, as simonw/llm's option
decorators do for click. A command that takes a group in part says which options
(``OUTPUT.only("as_json", "quiet")``) or other defaults (``ANSWER.defaults(max_new_tokens=200)``).
"""

from __future__ import annotations

import functools
import inspect
import os
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Any

import typer

from ..cache.policy import POLICIES, CacheSettings
from ..documents import Document, open_document
from ..engine.sampling import Sampler
from ..errors import UsageError
from ..memory.recall import DEFAULT_RECALL, RECALL_METHODS
from ..models.loading import LoadedModel, load_model
from ..sizes import parse_size
from .output import Readout

MODEL_PANEL = "Model and cache"
OUTPUT_PANEL = "Output"
INPUT_PANEL = "Input"


def option(*flags: str, panel: str = MODEL_PANEL, **settings: Any) -> Any:
    """A typer option in one of the help panels."""
    return typer.Option(*flags, rich_help_panel=panel, **settings)


PathArg = Annotated[
    str, typer.Argument(help="A PDF, a text file, or - for standard input.", show_default=False)
]
DOCUMENT_KINDS = "text, Markdown, PDF, HTML, EPUB or DOCX"
PathsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="PATH...",
        help=f"Documents ({DOCUMENT_KINDS}), read in order into one session; - reads standard input.",
        show_default=False,
    ),
]


@functools.cache
def _shipped(name: str) -> object | None:
    """What the default model's tuned freqkv.json sets ``name`` to, for the help (a small file)."""
    import json

    from ..models.default import SHIPPED_ADAPTER

    try:
        return json.loads((SHIPPED_ADAPTER / "freqkv.json").read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None


def from_the_model(name: str) -> str:
    """The default text of a cache setting a checkpoint's freqkv.json may set."""
    value = _shipped(name)
    return "from the model" if value is None else f"from the model: {value}"


# -- model and cache ---------------------------------------------------------------------------
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
WindowOpt = Annotated[
    str | None,
    option(
        "--window",
        "-w",
        metavar="SIZE",
        show_default=from_the_model("window"),
        help="Cache window N per layer, e.g. 1024, 4k: a tuned checkpoint's freqkv.json sets it, "
        "else the smaller of 4k and the model's window.",
    ),
]
CtxOpt = Annotated[
    str | None,
    option(
        "--ctx",
        "-c",
        metavar="SIZE",
        show_default="no limit",
        help="Most tokens the session may hold in all (document + conversation), e.g. 32k.",
    ),
]
SinkOpt = Annotated[
    int | None,
    option(
        "--sink",
        show_default=from_the_model("sink"),
        help="Sink tokens S, never compressed (a tuned checkpoint's freqkv.json, else 4).",
    ),
]
RecentOpt = Annotated[
    int | None,
    option(
        "--recent",
        show_default=from_the_model("recent"),
        help="Recent tokens R kept exact (a tuned checkpoint's freqkv.json, else 0).",
    ),
]
RatioOpt = Annotated[
    float | None,
    option(
        "--ratio",
        show_default=from_the_model("ratio"),
        help="Share r of the span kept, 0<r<1 (a tuned checkpoint's freqkv.json, else 0.5).",
    ),
]
ExactOpt = Annotated[
    float | None,
    option(
        "--exact",
        show_default="0.25",
        help="hybrid cache: share of the window kept for exact, selected tokens, 0<e<1.",
    ),
]
RereadOpt = Annotated[
    int,
    option(
        "--reread",
        min=0,
        help="hybrid cache: quote this many of the passages the question kept exact again just "
        "before the question, with the text around them (0: off).",
    ),
]
SelectOpt = Annotated[
    str | None,
    option(
        "--select",
        metavar="METHOD",
        show_default="attention",
        help="hybrid cache: how exact tokens are chosen: attention (the question's, through the "
        "model's retrieval heads; key norm until a question is asked), keynorm, surprise.",
    ),
]
CacheOpt = Annotated[str, option("--cache", metavar="POLICY", help=f"Cache policy: {', '.join(POLICIES)}.")]
RecallOpt = Annotated[
    str,
    option(
        "--recall",
        metavar="METHOD",
        help="qa on a saved memory (.fkv): how the --reread passages are found: "
        f"{', '.join(RECALL_METHODS)} (docs/BENCHMARKS.md section 7).",
    ),
]
SaveOpt = Annotated[
    str | None,
    option(
        "--save",
        metavar="FILE.fkv",
        panel=OUTPUT_PANEL,
        show_default="none",
        help="Also keep the read document as a memory file: later questions on FILE.fkv need no "
        "re-reading (the document is then read before the question, as `freqkv read` does).",
    ),
]

# -- answers -----------------------------------------------------------------------------------
MaxNewOpt = Annotated[
    int, option("--max-new-tokens", "-n", min=1, panel=OUTPUT_PANEL, help="Longest answer, in tokens.")
]
TemperatureOpt = Annotated[
    float, option("--temperature", "-t", min=0.0, panel=OUTPUT_PANEL, help="0 = greedy.")
]
TopPOpt = Annotated[float, option("--top-p", panel=OUTPUT_PANEL, help="Nucleus sampling mass (0, 1].")]
RepetitionOpt = Annotated[
    float, option("--repetition-penalty", panel=OUTPUT_PANEL, help="1 = off; >1 discourages repeating.")
]
SeedOpt = Annotated[
    int | None,
    option("--seed", panel=OUTPUT_PANEL, show_default="a new one each run", help="Seed for sampling."),
]
SystemOpt = Annotated[
    str | None,
    option("--system", metavar="TEXT", panel=OUTPUT_PANEL, show_default="none", help="System prompt."),
]

# -- input and output --------------------------------------------------------------------------
PagesOpt = Annotated[
    str | None,
    option(
        "--pages",
        metavar="RANGE",
        panel=INPUT_PANEL,
        show_default="all",
        help="PDF pages to read, e.g. 3-40 or 1,4-6.",
    ),
]
PasswordOpt = Annotated[
    str | None,
    option(
        "--password",
        metavar="TEXT",
        envvar="FREQKV_PDF_PASSWORD",
        panel=INPUT_PANEL,
        show_default="none",
        help="Password of an encrypted PDF.",
    ),
]
JsonOpt = Annotated[
    bool, option("--json", panel=OUTPUT_PANEL, help="Print one JSON object at the end instead.")
]
QuietOpt = Annotated[
    bool, option("--quiet", "-q", panel=OUTPUT_PANEL, help="No progress or statistics on stderr.")
]
ProgressOpt = Annotated[
    bool, option("--progress", panel=OUTPUT_PANEL, help="Show progress even when stderr is not a terminal.")
]
NoColorOpt = Annotated[
    bool, option("--no-color", panel=OUTPUT_PANEL, help="No colours (NO_COLOR is honoured too).")
]
NoLogOpt = Annotated[
    bool,
    option(
        "--no-log",
        envvar="FREQKV_NO_LOG",
        panel=OUTPUT_PANEL,
        help="Keep this run out of the conversation log (freqkv logs); FREQKV_NO_LOG=1 too.",
    ),
]
PlotOpt = Annotated[
    str | None,
    option(
        "--plot",
        metavar="FILE",
        panel=OUTPUT_PANEL,
        show_default="none",
        help="Also draw a figure to this file (.png, .svg, .pdf); needs matplotlib.",
    ),
]


QuantizeOpt = Annotated[
    str | None,
    option(
        "--quantize",
        help="Weight-only quantization through bitsandbytes: int8 (LLM.int8) or int4 (NF4); about a "
        "half / a quarter of the 16-bit weights. Kept quantized under FREQKV_HOME for the next load.",
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


# -- the groups --------------------------------------------------------------------------------
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


def _size(text: str | None) -> int | None:
    return None if text is None else parse_size(text)


@dataclass
class CacheChoice:
    """The cache flags as given: ``settings`` holds them for the library to resolve (None: the
    checkpoint's, else the model's); sizes such as 4k are parsed here, so a bad one fails first.
    ``reread``: how many passages qa quotes again before its question (the other commands, 0)."""

    window: WindowOpt = None
    ctx: CtxOpt = None
    sink: SinkOpt = None
    recent: RecentOpt = None
    ratio: RatioOpt = None
    exact: ExactOpt = None
    cache: CacheOpt = "hybrid"
    reread: RereadOpt = 0
    select: SelectOpt = None
    recall: RecallOpt = DEFAULT_RECALL
    settings: CacheSettings = field(init=False)
    ctx_tokens: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.settings = CacheSettings(
            kind=self.cache,
            window=_size(self.window),
            sink=self.sink,
            recent=self.recent,
            ratio=self.ratio,
            exact=self.exact,
            selector=self.select,
        )
        self.ctx_tokens = _size(self.ctx)
        if self.recall not in RECALL_METHODS:
            raise UsageError(f"--recall '{self.recall}' is not one of {', '.join(RECALL_METHODS)}")

    def given(self) -> list[str]:
        """The flags of the cache settings given explicitly (a saved memory keeps its own)."""
        names = {"window": "--window", "sink": "--sink", "recent": "--recent", "ratio": "--ratio"}
        names.update({"exact": "--exact", "selector": "--select"})
        return [flag for name, flag in names.items() if getattr(self.settings, name) is not None]


@dataclass
class AnswerChoice:
    """How long an answer may be, how it is sampled, and the system prompt."""

    max_new_tokens: MaxNewOpt = 400
    temperature: TemperatureOpt = 0.0
    top_p: TopPOpt = 1.0
    seed: SeedOpt = None
    repetition_penalty: RepetitionOpt = 1.1
    system: SystemOpt = None

    def sampler(self) -> Sampler:
        return Sampler(
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
        )


@dataclass
class InputChoice:
    """Which pages of a PDF, and its password."""

    pages: PagesOpt = None
    password: PasswordOpt = None

    def open(self, path: str) -> Document:
        return open_document(path, password=self.password, pages=self.pages)


@dataclass
class OutputChoice:
    """JSON or text on stdout; how much goes to stderr, in colour or not."""

    as_json: JsonOpt = False
    quiet: QuietOpt = False
    progress: ProgressOpt = False
    no_color: NoColorOpt = False
    no_log: NoLogOpt = False  # only the commands that log offer it (LOGGED_OUTPUT)
    readout: Readout = field(init=False)

    def __post_init__(self) -> None:
        self.no_color = self.no_color or bool(os.environ.get("NO_COLOR"))
        self.readout = Readout(quiet=self.quiet, force_progress=self.progress, no_color=self.no_color)


class Options:
    """A group's options as a command takes them: all, or ``only`` some; ``defaults`` changes
    what an option defaults to, or fixes the value of one the command does not offer."""

    def __init__(
        self, group: type, names: tuple[str, ...] | None = None, defaults: dict[str, Any] | None = None
    ) -> None:
        self.group = group
        self.hints = typing.get_type_hints(group, include_extras=True)
        self.fields = {f.name: f for f in fields(group) if f.init}
        self.names = tuple(self.fields) if names is None else names
        self.given = dict(defaults or {})
        unknown = [name for name in (*self.names, *self.given) if name not in self.fields]
        if unknown:
            raise TypeError(f"{group.__name__} has no option {', '.join(unknown)}")

    def only(self, *names: str) -> Options:
        return Options(self.group, names, self.given)

    def without(self, *names: str) -> Options:
        return self.only(*(name for name in self.names if name not in names))

    def defaults(self, **values: Any) -> Options:
        return Options(self.group, self.names, {**self.given, **values})

    def parameters(self) -> list[inspect.Parameter]:
        return [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=self._default(name), annotation=self.hints[name]
            )
            for name in self.names
        ]

    def build(self, values: dict[str, Any]) -> Any:
        """The group's dataclass from the command's arguments (its own are taken out of ``values``)."""
        fixed = {name: value for name, value in self.given.items() if name not in self.names}
        return self.group(**fixed, **{name: values.pop(name) for name in self.names})

    def _default(self, name: str) -> Any:
        if name in self.given:
            return self.given[name]
        default = self.fields[name].default
        return inspect.Parameter.empty if default is MISSING else default


MODEL = Options(ModelChoice)
CACHE = Options(CacheChoice).without("reread", "select", "recall")
COMPARED = Options(CacheChoice).without(
    "ctx", "cache", "reread", "recall"
)  # eval's --cache lists the policies
ANSWER = Options(AnswerChoice)
INPUT = Options(InputChoice)
OUTPUT = Options(OutputChoice).without("no_log")
LOGGED_OUTPUT = Options(OutputChoice)  # summarize, qa, chat: --no-log too


def takes(**groups: Options) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command option groups: each of its parameters named here stands, in the signature
    Typer reads, for the group's options, and receives the group's dataclass built from them.
    A command that only passes its groups on takes them as ``**groups``."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(command, include_extras=True)
        named = inspect.signature(command).parameters
        parameters: list[inspect.Parameter] = []
        for parameter in named.values():
            if parameter.name in groups:
                parameters += groups[parameter.name].parameters()
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:  # **groups: the ones not named
                for name, group in groups.items():
                    parameters += group.parameters() if name not in named else []
            else:
                annotation = hints.get(parameter.name, parameter.annotation)
                parameters.append(
                    parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
                )
        names = [parameter.name for parameter in parameters]
        clashes = {name for name in names if names.count(name) > 1}
        if clashes:
            raise TypeError(f"{command.__name__}: options named twice: {', '.join(sorted(clashes))}")

        @functools.wraps(command)
        def run(**values: Any) -> None:
            built = {name: group.build(values) for name, group in groups.items()}
            command(**values, **built)

        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return run

    return decorate
