"""`autodim` (`reprokit autodim`): AutoDim's per-field embedding-width search, its derivation and
a retrained ensemble per method, compared with paired tests; plus a PD-aware choice.

Three steps (`shared/reference/embeddings.md` §2.1):

1. **Search**, once per search seed (`run_search`): the weight-sharing table of
   `reprokit.nn.autodim` under the configured MLP, trained on the training split less a
   validation part (1/9, the paper's 8:1); the weights W take Adam steps on training batches and,
   after the uniform-α warm-up, α takes one Adam step on a validation batch after every
   `alpha_every` weight steps (first-order bi-level, ξ = 0). The `same-batch` variant (AutoDim-s)
   steps α on the training batch W just used, every step. Every random choice (split, order,
   initialisation, Gumbel noise, dropout) comes from generators seeded from the seed stream
   `autodim-search` (`sources.source_seed`), so a search is a function of (base seed, k). The α
   trajectories, the argmax widths at regular checkpoints and the α steps taken are kept in
   ``RUN/search/<variant>-<k>.json``; a resumed study reuses a search whose key (config, study
   settings, data fingerprint) matches.
2. **Derive**: per seed the argmax of α per field; the study's widths are the majority across
   seeds (ties to the smaller width). `search_agreement`: the share of fields on which every seed
   chose the same width, and the mean Pearson correlation over pairs of seeds of their widths
   (null where a seed chose one width everywhere: the correlation is undefined then).
3. **Retrain** through the study engine (`reprokit.runners.study`), one paired arm per method, all
   with the embedding dimension d_N (the largest candidate) that a field's width is projected to
   (`model.field_dims`, `reprokit.nn.mde`): `full` (the baseline: every field d_N), `autodim`,
   `autodim-s`, `mde` (the α-power rule with base_dim d_N; its α from a grid 0.05..1 is the one
   whose table budget is nearest AutoDim's, so MDE and AutoDim compare at equal memory) and
   `random` (seeded random candidate widths at AutoDim's table budget: the nearest of a
   permutation of AutoDim's widths over the fields and 4095 seeded draws, `random_dims`).

With ``objective="auc-pd"`` every distinct width set seen during the search (each seed's argmax at
its checkpoints, and the final choice) is trained with `quick_replicas` replicas under
``RUN/objective/``; among the sets on the Pareto front of (AUC up, PD rel down) the rule picks the
one with the lowest PD rel whose AUC is at most `auc_tolerance` below the best AUC on the front,
and an `autodim-pd` arm retrains it with the study's replicas.

The document (``autodim.json``, kind `autodim`) is a paired study's (`compare_document`: arms,
tests, Pareto), so report and gate read it like compare.json, plus `dims`, `dims_per_seed`,
`search_agreement`, `methods` and the search itself.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.jsonio import as_float, to_json
from reprokit.metrics.churn import ChurnGroups
from reprokit.metrics.paired import TEST_METHODS, paired_tests
from reprokit.metrics.stats import pareto_front
from reprokit.runners.ensemble import StepProgress, data_fingerprint, default_run_dir
from reprokit.runners.executors import Executor
from reprokit.runners.study import (
    Arm,
    ArmResult,
    StudyDir,
    StudyProgress,
    arm_config,
    make_arms,
    paired_document,
    run_study,
)
from reprokit.runschema import AUTODIM
from reprokit.sources import source_seed
from reprokit.store import atomic_write_json, read_json, run_lock

KIND = AUTODIM
DOCUMENT = "autodim.json"
SEARCH_DIR = "search"
OBJECTIVE_DIR = "objective"
#: The seed stream of the searches (not a nondeterminism source a run varies).
SEARCH_SOURCE = "autodim-search"
RANDOM_SOURCE = "autodim-random"
VARIANTS = {"bilevel": "autodim", "same-batch": "autodim-s"}
OBJECTIVES = ("auc", "auc-pd")
DEFAULT_CANDIDATES = (2, 4, 8, 16, 32)
MDE_ALPHAS = tuple(round(0.05 * k, 2) for k in range(1, 21))
RANDOM_DRAWS = 4096
#: The warm-up with uniform α when --warmup-steps is not given: this share of the search's steps.
WARMUP_SHARE = 0.2
#: Points of an α trajectory kept per search (evenly spaced over its steps, the last included).
TRAJECTORY_POINTS = 100

#: search_progress(done, total, info): searches finished of all; info has "variant", "seed".
SearchProgress = Callable[[int, int, dict[str, Any]], None]


@dataclass(frozen=True)
class AutoDimSettings:
    """What a study searches with (the study manifest's `study` block; resume compares it)."""

    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    search_seeds: int = 3
    search_epochs: int = 4
    alpha_every: int = 10
    warmup_steps: int | None = None  # None: WARMUP_SHARE of the search's weight steps
    search_lr: float = 0.001
    alpha_lr: float = 0.01
    val_fraction: float = 1.0 / 9.0
    checkpoints: int = 5
    objective: str = "auc"
    auc_tolerance: float = 0.001
    quick_replicas: int = 2

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["candidates"] = list(self.candidates)
        if self.objective != "auc-pd":  # what only the PD-aware objective uses
            for key in ("auc_tolerance", "quick_replicas"):
                doc.pop(key)
        return doc

    def search_dict(self) -> dict[str, Any]:
        """What the searches and the study's directory depend on: everything but the objective,
        so a finished study resumed with --objective auc-pd reuses its searches and arms."""
        doc = self.to_dict()
        for key in ("objective", "auc_tolerance", "quick_replicas"):
            doc.pop(key, None)
        return doc


def parse_candidates(spec: str | Sequence[int]) -> tuple[int, ...]:
    """`--candidates 2,4,8`: at least two distinct positive widths, returned ascending."""
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
        try:
            values = [int(s) for s in items]
        except ValueError:
            raise ReprokitError(
                f"--candidates must be comma-separated whole widths, e.g. 2,4,8,16,32; got {spec!r}"
            ) from None
    else:
        values = [int(v) for v in spec]
    bad = [v for v in values if v < 1]
    if bad:
        raise ReprokitError(f"--candidates must be positive widths (at least 1), got {bad[0]}")
    distinct = sorted(set(values))
    if len(distinct) < 2:
        shown = distinct[0] if distinct else "none"
        raise ReprokitError(
            f"--candidates needs at least two distinct widths to choose from, got {shown}"
        )
    return tuple(distinct)


def check_settings(settings: AutoDimSettings) -> AutoDimSettings:
    """Range checks with the option names users type."""
    parse_candidates(settings.candidates)
    checks = [
        (
            settings.search_seeds >= 1,
            f"--search-seeds must be at least 1, got {settings.search_seeds}",
        ),
        (
            settings.search_epochs >= 1,
            f"--search-epochs must be at least 1, got {settings.search_epochs}",
        ),
        (
            settings.alpha_every >= 1,
            f"--alpha-every must be at least 1, got {settings.alpha_every}",
        ),
        (
            settings.warmup_steps is None or settings.warmup_steps >= 0,
            f"--warmup-steps must be 0 or more, got {settings.warmup_steps}",
        ),
        (settings.search_lr > 0, f"--search-lr must be positive, got {settings.search_lr}"),
        (settings.alpha_lr > 0, f"--alpha-lr must be positive, got {settings.alpha_lr}"),
        (0 < settings.val_fraction < 1, "the search's validation fraction must lie in (0, 1)"),
        (
            settings.checkpoints >= 1,
            f"--checkpoints must be at least 1, got {settings.checkpoints}",
        ),
        (
            settings.objective in OBJECTIVES,
            f"unknown --objective {settings.objective!r}; choose auc or auc-pd",
        ),
        (settings.auc_tolerance >= 0, "--auc-tolerance must be 0 or more"),
        (settings.quick_replicas >= 2, "--quick-replicas must be at least 2 (PD needs a pair)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ReprokitError(message)
    return settings


def check_data(encoded: Any) -> list[str]:
    """The categorical field names to search widths for; no categorical field is an error."""
    names = list(encoded.field_names)
    if not names or encoded.train_cat.shape[1] == 0:
        raise ReprokitError(
            "reprokit autodim searches a width per categorical field, and the data has none"
        )
    if len(encoded.train_y) < 20:
        raise ReprokitError(
            f"reprokit autodim needs at least 20 training rows to split off a validation part, "
            f"got {len(encoded.train_y)}"
        )
    return names


def base_config(config: RunConfig, settings: AutoDimSettings) -> RunConfig:
    """The config every method retrains with: a `table` at the largest candidate width d_N (each
    method's widths project to it)."""
    if config.model.embedding != "table":
        raise ReprokitError(
            "reprokit autodim sets each field's width of a plain table (model.embedding=table); "
            f"this config has model.embedding={config.model.embedding}"
        )
    if config.model.field_dims:
        raise ReprokitError(
            "reprokit autodim chooses model.field_dims itself; leave it out of the config"
        )
    if config.replicas < 2:
        raise ReprokitError(
            "reprokit autodim needs at least 2 replicas per method (PD needs a pair)"
        )
    cfg = copy.deepcopy(config)
    cfg.model.embedding_dim = max(settings.candidates)
    return cfg.validate()


# ---------------------------------------------------------------------------------------- search
def _sub_seeds(seed: int, count: int) -> list[int]:
    children = np.random.SeedSequence(seed).spawn(count)
    return [int(c.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1) for c in children]


def table_params(dims: dict[str, int], names: Sequence[str], vocab_sizes: Sequence[int]) -> int:
    """Embedding-table parameters Σ_f n_f · d_f (the paper's Params; projections not counted)."""
    return int(sum(int(v) * int(dims[n]) for n, v in zip(names, vocab_sizes, strict=True)))


def validation_rows(n: int, settings: AutoDimSettings) -> int:
    """Rows of the training split held out for the α steps (at least 2)."""
    return max(2, int(round(n * settings.val_fraction)))


def warmup_steps(total: int, settings: AutoDimSettings) -> int:
    """Weight steps with uniform α: --warmup-steps, else WARMUP_SHARE of the search's steps."""
    if settings.warmup_steps is not None:
        return int(settings.warmup_steps)
    return int(total * WARMUP_SHARE)


def search_steps(n: int, batch_size: int, settings: AutoDimSettings) -> int:
    """Weight steps of a search over `n` training rows (batches of fewer than two rows are
    skipped: BatchNorm needs two); refuses a search too short for any α step."""
    rows = n - validation_rows(n, settings)
    per_epoch = sum(1 for lo in range(0, max(rows, 0), batch_size) if rows - lo >= 2)
    total = per_epoch * settings.search_epochs
    warmup = warmup_steps(total, settings)
    if total < warmup + settings.alpha_every:
        raise ReprokitError(
            f"the search has {total} weight steps ({rows} rows, batch size {batch_size}, "
            f"{settings.search_epochs} epoch(s)), too few for an α step after --warmup-steps "
            f"{warmup} and --alpha-every {settings.alpha_every}; lower them or "
            "raise --search-epochs"
        )
    return total


def run_search(
    encoded: Any,
    config: RunConfig,
    settings: AutoDimSettings,
    k: int,
    variant: str = "bilevel",
) -> dict[str, Any]:
    """One search (seed k, `variant` bilevel or same-batch): see the module docstring."""
    import torch
    import torch.nn.functional as F

    from reprokit.nn.autodim import AutoDimEmbeddings, gumbel_temperature
    from reprokit.nn.models import CTRModel
    from reprokit.training.loop import configure_determinism

    if variant not in VARIANTS:
        raise ReprokitError(f"unknown search variant {variant!r}; choose bilevel or same-batch")
    names = check_data(encoded)
    configure_determinism(config)
    torch.set_num_threads(config.threads)
    seed = source_seed(config.seed, SEARCH_SOURCE, k)
    init_seed, order_seed, gumbel_seed, dropout_seed, split_seed = _sub_seeds(seed, 5)
    m = config.model
    table = AutoDimEmbeddings(encoded.vocab_sizes, settings.candidates)
    n_tasks = encoded.train_y.shape[1]
    model = CTRModel(
        table,
        encoded.train_num.shape[1],
        hidden=m.hidden,
        activation=m.activation,
        dropout=m.dropout,
        batch_norm=m.batch_norm,
        n_tasks=n_tasks,
    )
    model.reset_parameters(torch.Generator().manual_seed(init_seed))
    model.set_dropout_generator(torch.Generator().manual_seed(dropout_seed))
    table.generator = torch.Generator().manual_seed(gumbel_seed)
    weights = [p for p in model.parameters() if p is not table.alpha]
    w_opt = torch.optim.Adam(weights, lr=settings.search_lr)
    a_opt = torch.optim.Adam([table.alpha], lr=settings.alpha_lr)

    cat = torch.as_tensor(encoded.train_cat)
    num = torch.as_tensor(encoded.train_num)
    y = torch.as_tensor(encoded.train_y)
    n = len(y)
    split = np.random.default_rng(split_seed).permutation(n)
    n_val = validation_rows(n, settings)
    val_rows, train_rows = split[:n_val], split[n_val:]
    bs = config.optim.batch_size
    total = search_steps(n, bs, settings)
    warmup = warmup_steps(total, settings)
    marks = {
        max(0, round(total * (i + 1) / settings.checkpoints) - 1)
        for i in range(settings.checkpoints)
    }
    keep = {
        max(0, round((total - 1) * i / (TRAJECTORY_POINTS - 1))) for i in range(TRAJECTORY_POINTS)
    }
    order_rng = np.random.default_rng(order_seed)
    val_order = order_rng.permutation(n_val)
    val_pos = 0
    widths = np.asarray(table.candidates)

    def argmax_dims() -> dict[str, int]:
        return {
            f: int(w)
            for f, w in zip(names, widths[table.probabilities().argmax(1).numpy()], strict=True)
        }

    trajectory: dict[str, list[Any]] = {"step": [], "probabilities": []}
    checkpoints: list[dict[str, Any]] = []
    alpha_steps: list[int] = []
    losses: list[float] = []
    val_losses: list[float] = []
    t = 0
    start = time.perf_counter()
    model.train()
    for _epoch in range(settings.search_epochs):
        perm = train_rows[order_rng.permutation(len(train_rows))]
        for lo in range(0, len(perm), bs):
            idx = torch.as_tensor(perm[lo : lo + bs])
            if len(idx) < 2:  # BatchNorm needs two rows
                continue
            table.uniform = t < warmup
            table.temperature = gumbel_temperature(t)
            loss = F.binary_cross_entropy_with_logits(model(cat[idx], num[idx]), y[idx])
            w_opt.zero_grad(set_to_none=True)
            a_opt.zero_grad(set_to_none=True)
            loss.backward()
            w_opt.step()
            losses.append(float(loss.detach()))
            searching = not table.uniform
            if searching and variant == "same-batch":
                a_opt.step()  # α from the gradient of the same training batch
                alpha_steps.append(t)
            elif searching and (t - warmup + 1) % settings.alpha_every == 0:
                take = val_order[val_pos : val_pos + bs]
                val_pos += bs
                if len(take) < min(bs, n_val):  # the validation part is cycled through
                    val_order = order_rng.permutation(n_val)
                    take, val_pos = val_order[:bs], bs
                vidx = torch.as_tensor(val_rows[take])
                vloss = F.binary_cross_entropy_with_logits(model(cat[vidx], num[vidx]), y[vidx])
                a_opt.zero_grad(set_to_none=True)
                w_opt.zero_grad(set_to_none=True)
                vloss.backward()
                a_opt.step()
                alpha_steps.append(t)
                val_losses.append(float(vloss.detach()))
            if t in keep:
                trajectory["step"].append(t)
                trajectory["probabilities"].append(table.probabilities().tolist())
            if t in marks:
                checkpoints.append({"step": t, "dims": argmax_dims()})
            t += 1
    if t == 0:
        raise ReprokitError("the search has no training batch of two rows or more; use more data")
    probs = table.probabilities()
    return {
        "variant": variant,
        "method": VARIANTS[variant],
        "seed_index": k,
        "seed": seed,
        "steps": t,
        "alpha_every": settings.alpha_every if variant == "bilevel" else 1,
        "warmup_steps": warmup,
        "alpha_steps": alpha_steps,
        "final_temperature": gumbel_temperature(t - 1),
        "train_rows": len(train_rows),
        "val_rows": n_val,
        "fields": names,
        "candidates": list(table.candidates),
        "probabilities": {f: row for f, row in zip(names, probs.tolist(), strict=True)},
        "dims": argmax_dims(),
        "trajectory": trajectory,
        "checkpoints": checkpoints,
        "train_loss_last": float(np.mean(losses[-20:])),
        "val_loss_last": float(np.mean(val_losses[-5:])) if val_losses else None,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------- derive
def majority_dims(dims_per_seed: Sequence[dict[str, int]]) -> dict[str, int]:
    """Per field the width most seeds chose; a tie goes to the smaller width."""
    if not dims_per_seed:
        raise ReprokitError("no search to derive widths from")
    out = {}
    for field in dims_per_seed[0]:
        counts = Counter(int(d[field]) for d in dims_per_seed)
        top = max(counts.values())
        out[field] = min(w for w, c in counts.items() if c == top)
    return out


def search_agreement(dims_per_seed: Sequence[dict[str, int]]) -> dict[str, Any]:
    """`all_agree`: share of fields on which every seed chose the same width; `pearson`: mean over
    pairs of seeds of the Pearson correlation of their widths over the fields (None when no pair
    has one: a seed that chose a single width everywhere has no correlation); `pairs`: each pair."""
    fields = list(dims_per_seed[0]) if dims_per_seed else []
    same = [len({int(d[f]) for d in dims_per_seed}) == 1 for f in fields]
    pairs = []
    for i, j in itertools.combinations(range(len(dims_per_seed)), 2):
        a = np.asarray([dims_per_seed[i][f] for f in fields], dtype=np.float64)
        b = np.asarray([dims_per_seed[j][f] for f in fields], dtype=np.float64)
        r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
        pairs.append({"seeds": [i, j], "pearson": r})
    finite = [p["pearson"] for p in pairs if p["pearson"] is not None]
    return {
        "all_agree": float(np.mean(same)) if same else None,
        "pearson": float(np.mean(finite)) if finite else None,
        "pairs": pairs,
        "seeds": len(dims_per_seed),
    }


def random_dims(
    names: Sequence[str],
    vocab_sizes: Sequence[int],
    candidates: Sequence[int],
    searched: dict[str, int],
    seed: int,
) -> dict[str, int]:
    """Seeded random candidate widths whose table budget is nearest the searched one: the
    nearest of a random permutation of the searched widths over the fields (exactly the budget
    when the fields' vocabularies are equal) and `RANDOM_DRAWS` independent draws per field, in
    nine groups with P(d) ∝ d^−β, β = −4..4 (β = 0: uniform), the searched widths themselves left
    out; the first wins a tie."""
    rng = np.random.default_rng(seed)
    v = np.asarray(vocab_sizes, dtype=np.int64)
    target = table_params(searched, names, vocab_sizes)
    perm = np.asarray([searched[f] for f in names], dtype=np.int64)[rng.permutation(len(names))]
    widths = np.asarray(candidates, dtype=np.int64)
    # draws tilted towards small or large widths (P(d) ∝ d^−β), so budgets near either end of
    # the range are reachable too (uniform draws almost never put 7 of 8 fields at the minimum)
    tilts = np.linspace(-4.0, 4.0, 9)
    per_tilt = RANDOM_DRAWS // len(tilts)
    draws = np.vstack(
        [
            rng.choice(widths, size=(per_tilt, len(names)), p=(w := widths**-b) / w.sum())
            for b in tilts
        ]
    )
    options = np.vstack([perm[None, :], draws])
    gap = np.abs(options @ v - target).astype(np.float64)
    same = (options == np.asarray([searched[f] for f in names])[None, :]).all(axis=1)
    if not same.all():  # the searched widths themselves are no random baseline
        gap[same] = np.inf
    best = options[int(np.argmin(gap))]
    return {f: int(w) for f, w in zip(names, best, strict=True)}


def mde_choice(
    names: Sequence[str], vocab_sizes: Sequence[int], base_dim: int, searched: dict[str, int]
) -> tuple[float, dict[str, int]]:
    """(α, widths) of the MDE α-power rule with `base_dim`: the α of `MDE_ALPHAS` whose table
    budget is nearest the searched one (the smaller α on a tie)."""
    from reprokit.nn.mde import mde_widths

    target = table_params(searched, names, vocab_sizes)
    best: tuple[int, float, dict[str, int]] | None = None
    for alpha in MDE_ALPHAS:
        dims = dict(zip(names, mde_widths(list(vocab_sizes), alpha, base_dim), strict=True))
        gap = abs(table_params(dims, names, vocab_sizes) - target)
        if best is None or gap < best[0]:
            best = (gap, alpha, dims)
    assert best is not None
    return best[1], best[2]


# ---------------------------------------------------------------------------------------- study
def _key(config: RunConfig, settings: AutoDimSettings, fingerprint: str) -> str:
    # the replica count is not part of a search (a larger --replicas extends the study only)
    doc = {k: v for k, v in config.to_dict().items() if k != "replicas"}
    text = to_json({"config": doc, "study": settings.search_dict(), "data": fingerprint})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _dims_slug(dims: dict[str, int]) -> str:
    return "dims-" + hashlib.sha256(to_json(dims).encode()).hexdigest()[:10]


def check_autodim(
    config: RunConfig,
    settings: AutoDimSettings,
    out: str | Path | None = None,
    *,
    force: bool = False,
    test: str = "permutation",
    encoded: Any = None,
) -> tuple[RunConfig, StudyDir]:
    """Everything that can be checked before any search: settings, config, data (when given),
    the arms' configs and the run directory; creates nothing."""
    check_settings(settings)
    if test not in TEST_METHODS:
        raise ReprokitError(f"unknown paired test {test!r}; choose {' or '.join(TEST_METHODS)}")
    base = base_config(config, settings)
    if encoded is not None:
        check_data(encoded)
        search_steps(len(encoded.train_y), base.optim.batch_size, settings)
    root = Path(out) if out is not None else default_run_dir(KIND)
    manifest = {
        "schema_version": 1,
        "kind": KIND,
        "config": base.to_dict(),
        "study": settings.search_dict(),
    }
    study = StudyDir(root=root, kind=KIND, document=DOCUMENT, manifest=manifest)
    study.check([], force)
    return base, study


def _cached_search(path: Path, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if path.exists():
        try:
            doc = read_json(path)
        except ReprokitError:
            doc = {}
        if doc.get("key") == key:
            return doc
    doc = {"schema_version": 1, "key": key, **compute()}
    atomic_write_json(path, doc)
    return doc


def run_searches(
    encoded: Any,
    base: RunConfig,
    settings: AutoDimSettings,
    root: Path,
    progress: SearchProgress | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every search of the study, bilevel and same-batch, one per seed (cached under search/)."""
    key = _key(base, settings, data_fingerprint(encoded))
    (root / SEARCH_DIR).mkdir(parents=True, exist_ok=True)
    out: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    total = len(VARIANTS) * settings.search_seeds
    done = 0
    for variant in VARIANTS:
        for k in range(settings.search_seeds):
            if progress:
                progress(done, total, {"variant": variant, "seed": k})
            path = root / SEARCH_DIR / f"{variant}-{k}.json"
            out[variant].append(
                _cached_search(
                    path,
                    key,
                    lambda variant=variant, k=k: run_search(encoded, base, settings, k, variant),
                )
            )
            done += 1
    if progress:
        progress(done, total, {"variant": None, "seed": None})
    return out


def objective_sets(
    searches: Sequence[dict[str, Any]], final: dict[str, int]
) -> list[dict[str, int]]:
    """The distinct width sets seen during the bilevel searches: the final choice first, then
    every seed's argmax at its checkpoints, in order."""
    seen: list[dict[str, int]] = [dict(final)]
    for search in searches:
        for point in search.get("checkpoints") or []:
            dims = {f: int(w) for f, w in point["dims"].items()}
            if dims not in seen:
                seen.append(dims)
    return seen


def pick_from_front(points: Sequence[dict[str, Any]], tolerance: float) -> int:
    """Index of the PD-aware choice: on the Pareto front of (AUC up, PD rel down), the lowest PD
    rel among the points whose AUC is at most `tolerance` below the front's best AUC (ties: the
    smaller table)."""
    coords = [[as_float(p["pd_rel"]), as_float(p["auc"])] for p in points]
    front = pareto_front(coords, maximize=[False, True])
    if not front:
        return 0
    best_auc = max(coords[i][1] for i in front)
    eligible = [i for i in front if coords[i][1] >= best_auc - tolerance]
    return min(eligible, key=lambda i: (coords[i][0], points[i]["table_params"]))


def run_objective(
    encoded: Any,
    base: RunConfig,
    settings: AutoDimSettings,
    root: Path,
    sets: Sequence[dict[str, int]],
    *,
    workers: int = 1,
    executor: Executor | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Two quick replicas (`quick_replicas`) per width set under objective/, then the pick."""
    from reprokit.runners.ensemble import train_ensemble

    names = list(encoded.field_names)
    quick = copy.deepcopy(base)
    quick.replicas = settings.quick_replicas
    points = []
    start = time.perf_counter()
    for dims in sets:
        cfg = arm_config(quick, {"model.field_dims": dims}, "the auc-pd objective")
        summary = train_ensemble(
            cfg,
            out=root / OBJECTIVE_DIR / _dims_slug(dims),
            workers=workers,
            force=force,
            encoded=encoded,
            executor=executor,
        )
        points.append(
            {
                "dims": dims,
                "table_params": table_params(dims, names, encoded.vocab_sizes),
                "auc": as_float((summary.get("auc") or {}).get("mean")),
                "pd_rel": as_float((summary.get("pd") or {}).get("rel")),
                "train_seconds": as_float((summary.get("train_seconds") or {}).get("total")),
            }
        )
    front = pareto_front([[p["pd_rel"], p["auc"]] for p in points], maximize=[False, True])
    picked = pick_from_front(points, settings.auc_tolerance)
    for i, p in enumerate(points):
        p["pareto"] = i in front
    return {
        "name": "auc-pd",
        "rule": (
            "on the Pareto front of (AUC mean, PD rel) over the quick replicas, the lowest PD rel "
            f"among the sets whose AUC is at most {settings.auc_tolerance:g} below the front's "
            "best AUC (ties: the smaller table)"
        ),
        "quick_replicas": settings.quick_replicas,
        "candidates": points,
        "picked": points[picked]["dims"],
        "picked_index": picked,
        "picked_is_autodim": picked == 0,
        "cost": {
            "trainings": len(points) * settings.quick_replicas,
            "seconds": time.perf_counter() - start,
        },
    }


def method_specs(
    encoded: Any,
    base: RunConfig,
    settings: AutoDimSettings,
    searches: dict[str, list[dict[str, Any]]],
    objective: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """One entry per method (baseline first): method, dims, overrides, how it was chosen."""
    names = list(encoded.field_names)
    vocab = list(encoded.vocab_sizes)
    d_max = max(settings.candidates)
    searched = majority_dims([s["dims"] for s in searches["bilevel"]])
    same_batch = majority_dims([s["dims"] for s in searches["same-batch"]])
    alpha, mde = mde_choice(names, vocab, d_max, searched)
    rand = random_dims(
        names, vocab, settings.candidates, searched, source_seed(base.seed, RANDOM_SOURCE, 0)
    )
    full = dict.fromkeys(names, d_max)
    specs = [
        {"method": "full", "dims": full, "overrides": {"model.field_dims": full}},
        {"method": "autodim", "dims": searched, "overrides": {"model.field_dims": searched}},
        {"method": "autodim-s", "dims": same_batch, "overrides": {"model.field_dims": same_batch}},
        {
            "method": "mde",
            "dims": mde,
            "overrides": {"model.embedding": f"mde:alpha={alpha:g},base_dim={d_max}"},
            "mde_alpha": alpha,
            "why": "the α of 0.05..1 whose table budget is nearest AutoDim's (equal memory)",
        },
        {"method": "random", "dims": rand, "overrides": {"model.field_dims": rand}},
    ]
    if objective is not None and not objective["picked_is_autodim"]:
        picked = objective["picked"]
        specs.append(
            {"method": "autodim-pd", "dims": picked, "overrides": {"model.field_dims": picked}}
        )
    for spec in specs:
        spec["table_params"] = table_params(spec["dims"], names, vocab)
    return specs


def _method_entry(spec: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    block = arm.get("embedding") or {}
    return {
        "method": spec["method"],
        "dims": spec["dims"],
        "params": block.get("params"),
        "table_params": spec["table_params"],
        **{k: arm.get(k) for k in ("auc", "logloss", "pd", "pd_ci", "tests", "diverged")},
        **{k: spec[k] for k in ("mde_alpha", "why") if k in spec},
    }


def autodim_document(
    results: list[ArmResult],
    specs: list[dict[str, Any]],
    searches: dict[str, list[dict[str, Any]]],
    objective: dict[str, Any] | None,
    settings: AutoDimSettings,
    root: Path,
    *,
    test: str = "permutation",
    plot: bool = True,
) -> dict[str, Any]:
    """autodim.json: the paired document of the methods (baseline `full`) and the search."""
    bilevel = searches["bilevel"]
    dims_per_seed = [s["dims"] for s in bilevel]
    extra = {
        "candidates": list(settings.candidates),
        "settings": settings.to_dict(),
        "dims": majority_dims(dims_per_seed),
        "dims_per_seed": dims_per_seed,
        "search_agreement": search_agreement(dims_per_seed),
        "search_agreement_s": search_agreement([s["dims"] for s in searches["same-batch"]]),
        "search": {
            variant: [
                {
                    k: s[k]
                    for k in (
                        "seed_index",
                        "seed",
                        "steps",
                        "alpha_every",
                        "warmup_steps",
                        "final_temperature",
                        "dims",
                        "probabilities",
                        "trajectory",
                        "checkpoints",
                        "train_loss_last",
                        "val_loss_last",
                        "seconds",
                    )
                }
                | {"alpha_updates": len(s["alpha_steps"])}
                for s in runs
            ]
            for variant, runs in searches.items()
        },
        "search_seconds": float(sum(s["seconds"] for runs in searches.values() for s in runs)),
    }
    doc = paired_document(KIND, results, 0, root, test=test, plot=plot, extra=extra)
    for entry, spec in zip(doc["arms"], specs, strict=True):
        entry["method"] = spec["method"]
        entry["dims"] = spec["dims"]
        entry["table_params"] = spec["table_params"]
    doc["methods"] = [_method_entry(s, a) for s, a in zip(specs, doc["arms"], strict=True)]
    if objective is not None:
        objective = dict(objective)
        by_method = {e["method"]: e for e in doc["arms"]}
        plain, picked = by_method["autodim"], by_method.get("autodim-pd", by_method["autodim"])
        if picked is not plain:
            test_vs = paired_tests([plain, picked], 0, method=test, seed=doc.get("seed") or 0)[1]
        else:
            test_vs = None
        objective["vs_autodim"] = {
            "auc": as_float((picked.get("auc") or {}).get("mean"))
            - as_float((plain.get("auc") or {}).get("mean")),
            "pd_rel": as_float((picked.get("pd") or {}).get("rel"))
            - as_float((plain.get("pd") or {}).get("rel")),
            "table_params": picked["table_params"] - plain["table_params"],
            "tests": test_vs,
        }
        doc["objective"] = objective
    return doc


def autodim(
    config: RunConfig,
    settings: AutoDimSettings,
    out: str | Path | None = None,
    *,
    workers: int = 1,
    force: bool = False,
    test: str = "permutation",
    plot: bool = True,
    progress: StudyProgress | None = None,
    search_progress: SearchProgress | None = None,
    encoded: Any = None,
    churn: ChurnGroups | None = None,
    step_progress: StepProgress | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Search, derive, (with auc-pd) choose by PD, retrain every method; write autodim.json."""
    if encoded is None:
        from reprokit.data.encoding import load_encoded

        encoded = load_encoded(config.data)
    base, study = check_autodim(config, settings, out, force=force, test=test, encoded=encoded)
    with run_lock(study.root):
        study.prepare(force)
        searches = run_searches(encoded, base, settings, study.root, search_progress)
        final = majority_dims([s["dims"] for s in searches["bilevel"]])
        objective = None
        if settings.objective == "auc-pd":
            objective = run_objective(
                encoded,
                base,
                settings,
                study.root,
                objective_sets(searches["bilevel"], final),
                workers=workers,
                executor=executor,
                force=force,
            )
    specs = method_specs(encoded, base, settings, searches, objective)
    arms: list[Arm] = make_arms(
        base,
        [s["overrides"] for s in specs],
        labels=[s["method"] for s in specs],
        slugs=[s["method"] for s in specs],
        fields=[{"method": s["method"]} for s in specs],
    )

    def finish(results: list[ArmResult]) -> dict[str, Any]:
        return autodim_document(
            results, specs, searches, objective, settings, study.root, test=test, plot=plot
        )

    return run_study(
        study,
        arms,
        finish,
        workers=workers,
        force=force,
        encoded=encoded,
        churn=churn,
        progress=progress,
        step_progress=step_progress,
        executor=executor,
    )


def methods_total_replicas(config: RunConfig, settings: AutoDimSettings) -> int:
    """Replicas the retraining trains (for a progress bar): five methods, six with auc-pd."""
    return config.replicas * (6 if settings.objective == "auc-pd" else 5)


__all__ = [
    "AutoDimSettings",
    "autodim",
    "check_autodim",
    "majority_dims",
    "parse_candidates",
    "random_dims",
    "run_search",
    "search_agreement",
]
