"""The `alignlab demo` report: the terminal table, the plots, and a self-contained `report.html`.

    print(table(results))                    # one row per stage; "-" where a metric does not apply
    write_report(out, results, cfg)          # out/report.html (PNG plots inlined as base64) + out/report.png

Every plot is drawn from what the stages left behind: `results` (StageResult rows, with each trained policy's
checkpoint `curve`) and the `metrics.jsonl` of the stages' run directories. A new stage with a `curve` shows up
in the gold-vs-proxy and gold-vs-KL plots without changes here.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """One stage's row of the table and entry of results.json; a metric is None where it does not apply."""

    stage: str
    gold_reward: float | None = None
    """Mean gold reward of the policy's samples."""
    proxy_reward: float | None = None
    """Mean whitened RM score of the same samples."""
    kl_to_sft: float | None = None
    """k1 estimate of KL(policy || SFT), nats per sample."""
    kl_to_base: float | None = None
    """k1 estimate of KL(policy || base), nats per sample."""
    rm_accuracy: float | None = None
    """RM accuracy against the gold preference on held-out pairs."""
    curve: list[dict] = field(default_factory=list)
    """Measurements of checkpoints over training: {step, gold_reward, proxy_reward, kl_to_sft, kl_to_base}."""
    info: dict = field(default_factory=dict)
    """Stage-specific numbers (pair counts, label agreement, ...)."""
    samples: list[str] = field(default_factory=list)
    """A few sample texts."""
    run_dir: str | None = None
    """The stage's run directory."""
    seconds: float = 0.0
    """Wall-clock time of the stage, evaluation included."""
    cpu_seconds: float = 0.0
    """CPU time of the demo process during the stage (all threads)."""


COLUMNS = [("gold_reward", "gold reward", ".3f"), ("proxy_reward", "proxy reward", "+.2f"),
           ("kl_to_sft", "KL to SFT", ".2f"), ("kl_to_base", "KL to base", ".2f"),
           ("rm_accuracy", "RM accuracy", ".3f"), ("seconds", "wall s", ".0f"), ("cpu_seconds", "CPU s", ".0f")]
COLORS = {"base": "#999999", "sft": "#4c72b0", "dpo": "#dd8452", "ppo": "#55a868"}


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def footer(results) -> str:
    """Totals and what the numbers mean."""
    wall, cpu = sum(r.seconds for r in results), sum(r.cpu_seconds for r in results)
    lines = [f"total: {wall:.0f} s wall, {cpu:.0f} s CPU  ("
             + ", ".join(f"{r.stage} {r.seconds:.0f}/{r.cpu_seconds:.0f}" for r in results) + " s wall/CPU)"]
    pairs = next((r.info for r in results if r.stage == "pairs"), None)
    if pairs:
        lines.append(f"pairs: {pairs['train_pairs']} train (labels agree with gold on "
                     f"{100 * pairs['train_labels_agree_with_gold']:.0f}%), {pairs['heldout_pairs']} held-out "
                     "labelled by gold; RM accuracy is on the held-out pairs")
    lines.append("gold reward in [0, 1]; proxy = whitened RM score; KL = k1 estimate on the stage's samples, nats")
    return "\n".join(lines)


def table(results) -> str:
    """The stages as a fixed-width text table with a footer."""
    width = max(len(r.stage) for r in results) + 2
    lines = [f"{'stage':<{width}}" + "".join(f"{title:>13}" for _, title, _ in COLUMNS)]
    for r in results:
        lines.append(f"{r.stage:<{width}}" + "".join(f"{_cell(getattr(r, k), fmt):>13}" for k, _, fmt in COLUMNS))
    return "\n".join(lines) + "\n\n" + footer(results)


# ---------------------------------------------------------------- plots: each panel draws on one Axes


def read_metrics(run_dir: str | None) -> list[dict]:
    path = Path(run_dir or "") / "metrics.jsonl"
    return [json.loads(line) for line in path.open()] if run_dir and path.is_file() else []


def _series(metrics: list[dict], key: str) -> tuple[list, list]:
    rows = [m for m in metrics if key in m]
    return [m["step"] for m in rows], [m[key] for m in rows]


def _lines(ax, metrics: list[dict], keys: dict[str, str], ylabel: str, title: str) -> None:
    for key, label in keys.items():
        steps, values = _series(metrics, key)
        if steps:
            ax.plot(steps, values, "o-" if key.startswith("eval") else "-", ms=3, label=label)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)


def draw_sft(ax, runs: dict, results) -> None:
    _lines(ax, runs["sft"], {"loss": "train", "eval_loss": "held-out"}, "NLL per completion token",
           "SFT learning curve")


def draw_rm(ax, runs: dict, results) -> None:
    _lines(ax, runs["rm"], {"accuracy": "train (labeler)", "eval_accuracy": "eval split (labeler)"}, "pair accuracy",
           "Reward model training")
    acc = next((r.rm_accuracy for r in results if r.rm_accuracy is not None), None)
    if acc is not None:
        ax.axhline(acc, ls="--", c="k", lw=0.8, label=f"held-out vs gold: {acc:.3f}")
        ax.legend(fontsize=8)
    twin = ax.twinx()
    steps, loss = _series(runs["rm"], "loss")
    twin.plot(steps, loss, c="#bbbbbb", lw=1)
    twin.set_ylabel("BT loss (grey)")


def draw_dpo_loss(ax, runs: dict, results) -> None:
    _lines(ax, runs["dpo"], {"loss": "train", "eval/loss": "held-out"}, "DPO loss", "DPO learning curve")


def draw_dpo_margin(ax, runs: dict, results) -> None:
    _lines(ax, runs["dpo"], {"rewards/margin": "train", "eval/rewards/margin": "held-out"},
           "beta * (log-ratio chosen - rejected)", "DPO implicit reward margin")


def draw_ppo(ax, runs: dict, results) -> None:
    _lines(ax, runs["ppo"], {"score_normalized": "RM score (EOS penalty applied)", "reward": "score - beta * KL"},
           "per completion", "PPO training samples")
    twin = ax.twinx()
    steps, kl = _series(runs["ppo"], "kl")
    twin.plot(steps, kl, c="#bbbbbb", lw=1)
    twin.set_ylabel("KL to SFT, nats (grey)")


def draw_gold_proxy(ax, runs: dict, results) -> None:
    twin = ax.twinx()
    for r in (r for r in results if r.curve):
        steps = [p["step"] for p in r.curve]
        color = COLORS.get(r.stage)
        ax.plot(steps, [p["gold_reward"] for p in r.curve], "o-", c=color, label=f"{r.stage} gold")
        if all(p["proxy_reward"] is not None for p in r.curve):
            twin.plot(steps, [p["proxy_reward"] for p in r.curve], "s--", c=color, alpha=0.6, label=f"{r.stage} proxy")
    ax.set(xlabel="training step", ylabel="gold reward (solid)", title="Gold vs proxy reward over training")
    twin.set_ylabel("proxy reward, whitened RM score (dashed)")
    handles = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="lower right")


def draw_gold_kl(ax, runs: dict, results) -> None:
    for r in results:
        if r.curve:
            ax.plot([p["kl_to_sft"] for p in r.curve], [p["gold_reward"] for p in r.curve], "-", c=COLORS.get(r.stage),
                    alpha=0.5, lw=1)
        if r.gold_reward is not None and r.kl_to_sft is not None:
            ax.scatter([r.kl_to_sft], [r.gold_reward], s=60, c=COLORS.get(r.stage, "k"), label=r.stage, zorder=3)
    ax.set(xlabel="KL(policy || SFT), nats per sample", ylabel="gold reward",
           title="Gold reward vs KL to SFT (lines: checkpoints)")
    ax.legend(fontsize=8)


PANELS: list[tuple[str, str, Callable, tuple[str, ...]]] = [
    ("sft", "SFT learning curve: token-mean NLL of the completions", draw_sft, ("sft",)),
    ("rm", "Reward model: pair accuracy on its own labels over training, and held-out accuracy against gold",
     draw_rm, ("rm",)),
    ("dpo_loss", "DPO loss", draw_dpo_loss, ("dpo",)),
    ("dpo_margin", "DPO implicit reward margin (chosen minus rejected)", draw_dpo_margin, ("dpo",)),
    ("ppo", "PPO: the RM score and the KL-penalized reward of each step's samples, and their KL to the SFT model",
     draw_ppo, ("ppo",)),
    ("gold_proxy", "Gold and proxy reward of the policy's samples at each checkpoint", draw_gold_proxy, ()),
    ("gold_kl", "Gold reward against KL to the SFT model, every policy stage", draw_gold_kl, ()),
]
"""(name, caption, draw(ax, runs, results), run directories it needs)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    return buf.getvalue()


def plots(results) -> dict[str, bytes]:
    """name -> PNG bytes of every panel whose data exists."""
    plt = _pyplot()
    runs = {r.stage: read_metrics(r.run_dir) for r in results}
    out = {}
    for name, _, draw, needs in PANELS:
        if all(runs.get(stage) for stage in needs):
            fig, ax = plt.subplots(figsize=(6, 4))
            draw(ax, runs, results)
            out[name] = _png(fig)
    return out


def overview_png(results, path: Path) -> Path:
    """Every available panel in one figure (`report.png`)."""
    plt = _pyplot()
    runs = {r.stage: read_metrics(r.run_dir) for r in results}
    panels = [p for p in PANELS if all(runs.get(stage) for stage in p[3])]
    rows = max(1, -(-len(panels) // 3))  # three panels per row, as many rows as needed
    fig, axes = plt.subplots(rows, 3, figsize=(17, 4.5 * rows), squeeze=False)
    for ax, (_, _, draw, _) in zip(axes.flat, panels):
        draw(ax, runs, results)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    path.write_bytes(_png(fig))
    return path


# ---------------------------------------------------------------- the HTML page

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:8px;width:520px;vertical-align:top}
img{width:100%}figcaption{font-size:0.85em;color:#555}li{font-family:monospace;font-size:0.9em;margin:2px 0}
pre{background:#f6f6f6;padding:8px;font-size:0.85em;white-space:pre-wrap}"""


def html_table(results) -> str:
    head = "<tr><th>stage</th>" + "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in COLUMNS) + "</tr>"
    rows = ["<tr><td>" + html.escape(r.stage) + "</td>"
            + "".join(f"<td>{_cell(getattr(r, k), fmt)}</td>" for k, _, fmt in COLUMNS) + "</tr>" for r in results]
    return f'<table id="results">{head}{"".join(rows)}</table>'


def html_page(results, cfg, images: dict[str, bytes]) -> str:
    captions = {name: caption for name, caption, _, _ in PANELS}
    figures = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(captions[name])}</figcaption></figure>" for name, png in images.items())
    samples = "".join(f"<h3>{html.escape(r.stage)}</h3><ul>"
                      + "".join(f"<li>{html.escape(s)}</li>" for s in r.samples[:6]) + "</ul>"
                      for r in results if r.samples)
    info = {r.stage: r.info for r in results if r.info}
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>alignlab demo</title><style>{STYLE}</style>'
            "</head><body><h1>alignlab demo: the lab sentiment task</h1>"
            "<p>Every policy is sampled once per review opening (temperature 1) and scored by the programmatic gold "
            "reward; the proxy reward is the trained reward model's whitened score of the same samples.</p>"
            f"<h2>Results</h2>{html_table(results)}<pre>{html.escape(footer(results))}</pre>"
            f"<h2>Plots</h2>{figures}<h2>Samples</h2>{samples}"
            f"<h2>Stage details</h2><pre>{html.escape(json.dumps(info, indent=2))}</pre>"
            f"<h2>Config</h2><pre>{html.escape(json.dumps(dataclasses.asdict(cfg), indent=2))}</pre></body></html>")


def write_report(out: Path, results, cfg) -> Path:
    """Write `out/report.html` (self-contained) and `out/report.png`; return the HTML path."""
    overview_png(results, out / "report.png")
    path = out / "report.html"
    path.write_text(html_page(results, cfg, plots(results)), encoding="utf-8")
    return path
