"""Policy names -> Policy objects, for ``eval`` and ``serve``.

``make_policy("idm")``, ``make_policy("alpamayo", preset="tiny")``,
``make_policy("grpc://localhost:50051")``, or any importable class as ``"package.module:Class"``
(a user's own policy, no registration needed). Heavy policies are imported lazily, so asking for a
baseline never imports torch or grpc. Options are passed to the policy's constructor; an option it
does not take is a :class:`~alpasim_policy.errors.ConfigError` naming it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from alpasim_policy.errors import ConfigError

#: name -> "module:Class"
POLICIES: dict[str, str] = {
    "log_replay": "alpasim_policy.policies.baselines:LogReplayPolicy",
    "constant_velocity": "alpasim_policy.policies.baselines:ConstantVelocityPolicy",
    "idm": "alpasim_policy.policies.baselines:IDMPolicy",
    "alpamayo": "alpasim_policy.policies.alpamayo:AlpamayoPolicy",
}
GRPC_PREFIX = "grpc://"
GRPC_POLICY = "alpasim_policy.serve.client:EgodriverPolicy"


def known_policies() -> list[str]:
    return sorted(POLICIES) + [GRPC_PREFIX + "HOST:PORT", "package.module:Class"]


def _load(target: str, spec: str) -> type:
    module, _, cls = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise ConfigError(f"policy {spec!r}: its module {module} is not available in this build") from e
        raise
    return getattr(mod, cls)


def _construct(cls: type, spec: str, args: tuple, options: dict[str, Any]) -> Any:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return cls(*args, **options)
    params = sig.parameters
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if not takes_kwargs:
        bad = sorted(k for k in options if k not in params)
        if bad:
            known = sorted(
                k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            )
            raise ConfigError(f"policy {spec!r}: unknown option(s) {bad}; it takes {known}")
    return cls(*args, **options)


def policy_class(spec: str) -> type:
    """The class ``spec`` names (imported lazily): a registered name, ``grpc://...`` or ``module:Class``."""
    spec = str(spec).strip()
    if spec.startswith(GRPC_PREFIX):
        return _load(GRPC_POLICY, spec)
    if spec in POLICIES:
        return _load(POLICIES[spec], spec)
    module, _, cls = spec.partition(":")
    if module and cls.isidentifier():
        try:
            return _load(spec, spec)
        except AttributeError as e:
            raise ConfigError(f"policy {spec!r}: {module} has no class {cls}") from e
    raise ConfigError(f"unknown policy {spec!r}; known: {', '.join(known_policies())}")


def _accepts(cls: type, key: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    return key in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def split_options(policies: list[str], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Distribute ``--policy-option`` values over several policies.

    ``name.key=value`` goes to policy ``name`` only; a plain ``key=value`` goes to every policy
    whose constructor takes ``key`` (so ``--policy log_replay,alpamayo --policy-option preset=tiny``
    configures alpamayo and leaves log_replay alone). A key that no policy takes is a ConfigError.
    """
    out: dict[str, dict[str, Any]] = {p: {} for p in policies}
    classes = {p: policy_class(p) for p in policies}
    for key, value in options.items():
        scope, dot, sub = key.rpartition(".")
        if dot and scope in out:
            out[scope][sub] = value
            continue
        takers = [p for p in policies if _accepts(classes[p], key)]
        if not takers:
            raise ConfigError(f"--policy-option {key!r}: none of the policies {policies} takes it")
        for p in takers:
            out[p][key] = value
    return out


def make_policy(spec: str, **options: Any) -> Any:
    """Build the policy named ``spec`` (see :data:`POLICIES`, or ``grpc://HOST:PORT``)."""
    spec = str(spec).strip()
    grpc = spec.startswith(GRPC_PREFIX)
    if grpc and len(spec) <= len(GRPC_PREFIX):
        raise ConfigError(f"policy {spec!r}: expected grpc://HOST:PORT")
    return _construct(policy_class(spec), spec, (spec,) if grpc else (), options)


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, values parsed as YAML scalars (numbers, true/false, null)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--policy-option {item!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


#: Shorthand command-line flags for the Alpamayo policy's main options (issue: ``--preset`` etc.);
#: each maps to the constructor option of the same name.
SHORTHAND_OPTIONS = (
    "preset", "weights", "samples", "reasoning", "diffusion", "select", "device", "speculative", "draft",
)  # fmt: skip


def add_shorthand_arguments(parser: Any) -> None:
    """Add ``--preset --weights --samples --reasoning --diffusion --select --device --speculative
    --draft`` to a CLI parser.

    They are plain ``--policy-option KEY=VALUE`` under another name: each goes to every policy
    whose constructor takes it (today: ``alpamayo``), so ``eval --policy idm,alpamayo --samples 6``
    configures alpamayo and leaves idm alone.
    """
    g = parser.add_argument_group("Alpamayo policy options (shorthands for --policy-option KEY=VALUE)")
    g.add_argument("--preset", help="model preset: tiny | small | alpamayo-r1-10b")
    g.add_argument("--weights", help="local directory with real weights (safetensors shards)")
    g.add_argument("--samples", type=int, help="K trajectory samples per tick")
    g.add_argument("--reasoning", help="single (one CoC shared by all samples) | multi (one per sample)")
    g.add_argument("--diffusion", help="graph (CUDA graph on GPU, lean loop on CPU) | eager | lean | dynamic")
    g.add_argument("--select", help="first | medoid | scored | consistent")
    g.add_argument("--device", help="cpu | cuda")
    g.add_argument("--speculative", type=int, metavar="GAMMA",
                   help="speculative CoC decoding: up to GAMMA draft tokens per target forward (0 = off)")  # fmt: skip
    g.add_argument("--draft", help="draft-model folder for --speculative (default: prompt-lookup drafts)")


def shorthand_options(args: Any) -> dict[str, Any]:
    """The shorthand flags that were given, as an options dict."""
    return {k: getattr(args, k) for k in SHORTHAND_OPTIONS if getattr(args, k, None) is not None}
