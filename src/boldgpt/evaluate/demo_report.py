"""The demo's report (``report.md`` / ``report.html``) and closing printout, written
from its ``summary.json`` (see :mod:`boldgpt.evaluate.demo`): every number is read from
the summary, and every model number stands beside its baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boldgpt.evaluate.demo import PROMPTS
from boldgpt.evaluate.report import Report


def write_report(
    out_dir: Path,
    s: dict[str, Any],
    example_figs: list[Path],
    image_result: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` and ``report.html`` for summary ``s`` (and the image
    side's ``eval.json`` content, when it ran); returns both."""
    fig = out_dir / "figures"
    r = Report("boldgpt demo: a micro boldGPT on simulated NSD-Flat maps")
    r.text(
        f"A `{s['model']}` ({s['num_parameters'] / 1e6:.2f}M parameters; shuffled-order "
        f"autoregressive next-patch prediction of continuous 10x10 patches) trained for "
        f"{s['trained_steps']} steps of {s['global_batch_size']} maps (seed {s['seed']}) on "
        f"{s['num_train_maps']:,} training maps of `{s['source']}`"
        + (" (the embedded simulator, NSD-Flat format)" if s["source"].startswith("sim:") else "")
        + f", in {s['timings_s'].get('train_s', 0) / 60:.1f} min on "
        f"{s['machine']['device']} ({s['machine']['threads']} thread(s)"
        + (f" of an {s['machine']['cpu']}" if s["machine"].get("cpu") else "")
        + "). The number of "
        "steps is fixed, so the same seed gives the same model on any machine (up to float "
        f"rounding). Scores are on {s['num_eval_maps']} held-out validation maps (the "
        "shared-stimulus trials)."
    )
    _next_patch_section(r, s)
    r.figure(fig / "loss.png", "Training and validation loss, with the baselines")
    _completion_section(r, s, fig)
    r.heading("Samples")
    r.figure(
        fig / "samples.png",
        "Real validation maps (top) and maps sampled by the model, patch by patch, in its "
        "fixed and in a random order. 'means': each patch is the model's prediction given "
        "the patches before it (the structure it has learned, smoother than real maps); "
        "'sampled': each patch drawn from the model's predictive distribution, N(prediction, "
        "residual covariance), the Gaussian that MSE training implies (its covariance "
        "fitted on training maps at the end of training)",
    )
    if example_figs:
        r.figure(
            example_figs[-1],
            "During training: activity, target, next-patch prediction (random order), "
            "sample, and the order the patches were fed in",
        )
    r.figure(fig / "pca.png", "The MaskedPCA baseline: mean map and leading components")
    if image_result is not None:
        _image_section(r, s, image_result, out_dir / "images")
    r.heading("Reproduce")
    r.text(
        f"`boldgpt demo runs/demo --seed {s['seed']}` (this report). Then e.g. `boldgpt "
        "generate runs/demo/train/model --complete --observe left`, or train longer with "
        "`boldgpt train configs/boldgpt_cont_demo.yaml train.max_steps=3000`."
    )
    t = s["timings_s"]
    r.text(
        "Time: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in t.items())
        + f". Training throughput {s['maps_per_s'] or 0:.0f} maps/s."
    )
    return r.write(out_dir)


def _image_section(r: Report, s: dict[str, Any], result: dict[str, Any], images: Path) -> None:
    """Encoding and retrieval: the image side's evaluation with its baselines."""
    from boldgpt.evaluate.demo_images import IMAGE_STEPS
    from boldgpt.evaluate.eval import add_eval_sections

    steps = s["images"].get("steps", IMAGE_STEPS)
    r.heading("Encoding and retrieval")
    r.text(
        f"Trained beside the boldGPT, on another thread: an image encoder "
        f"(`imagebeit_micro_patch16`, masked patches of the 64 px stimuli, {steps['encoder']} "
        f"steps), frozen, under an encoding model (`image2bold_micro_patch10`: the map of an "
        f"unseen picture in one pass, {steps['image2bold']} steps of 16 maps) and a retrieval "
        f"model (`cbip_micro_patch10`: contrastive map and picture embeddings, "
        f"{steps['cbip']} steps of 64 maps). Encoding is scored against a ridge on the same "
        "encoder's features and, on simulated data, the simulator's true receptive fields "
        "and its noiseless maps (the ceiling); retrieval against chance, a ridge from "
        "MaskedPCA of the maps, and stimulus identification by those encoding models."
    )
    add_eval_sections(r, result, images / "figures")


def _next_patch_section(r: Report, s: dict[str, Any]) -> None:
    np_ = s["next_patch"]
    pca_name = f"MaskedPCA ({s['pca_components']})"
    label = {"fixed": "fixed (radial) order", "random": "random orders"}
    r.heading("Next-patch prediction")
    r.comparison(
        "Validation next-patch loss: in-mask MSE of each patch predicted from the patches "
        "before it (z-score units², lower is better); the last columns give baseline / model",
        {
            label[kind]: {
                "model": np_[kind]["model"]["loss"],
                "mean map": np_[kind]["mean map"]["loss"],
                pca_name: np_[kind]["MaskedPCA"]["loss"],
            }
            for kind in ("fixed", "random")
        },
        reference="model",
    )
    r.comparison(
        "The same predictions as in-mask R² (higher is better; 0 = predicting the mean value)",
        {
            label[kind]: {
                "model": np_[kind]["model"]["r2"],
                "mean map": np_[kind]["mean map"]["r2"],
                pca_name: np_[kind]["MaskedPCA"]["r2"],
            }
            for kind in ("fixed", "random")
        },
        reference="model",
        relation="difference",
    )
    r.text(next_patch_verdict(np_, s["pca_fit_maps"]))
    r.bullets(
        [
            "**mean map**: every patch predicted by the mean training map (what a model "
            "knows without looking at the map).",
            f"**MaskedPCA**: PCA ({s['pca_components']} components, fitted on "
            f"{s['pca_fit_maps']:,} training maps); each next patch is predicted from the "
            "patches before it by ridge regression on the components (a Gaussian prior whose "
            "strength is calibrated on held-out training maps), in the same orders as the "
            "model.",
            "Both baselines are measured in this run on the same maps.",
        ]
    )


def _relative(value: float, reference: float) -> str:
    """``"12% below"`` / ``"5% above"``: ``value`` relative to ``reference``."""
    change = 1 - value / reference
    return f"{abs(change):.0%} {'below' if change >= 0 else 'above'}"


def next_patch_verdict(np_: dict[str, Any], pca_fit_maps: int) -> str:
    """One paragraph: how the model compares with both baselines in both orders (and
    why PCA wins, when it does)."""
    f, rnd = np_["fixed"], np_["random"]
    model, mean, pca = f["model"]["loss"], f["mean map"]["loss"], f["MaskedPCA"]["loss"]
    text = (
        f"In the fixed order the model's loss is {_relative(model, mean)} the mean-map "
        f"baseline's ({model:.3f} vs {mean:.3f})"
    )
    if model <= pca:
        text += f" and {_relative(model, pca)} MaskedPCA's ({pca:.3f})."
    else:
        text += (
            f"; MaskedPCA's is lower ({pca:.3f}). PCA's "
            "prediction of a patch from the patches seen so far is exact linear algebra on "
            f"components fitted on {pca_fit_maps:,} maps, and these maps are dominated by smooth, "
            "largely linear-Gaussian structure; the transformer has to learn that conditional "
            "from mini-batches, and a micro model trained for minutes has not learned all of "
            "it. Longer training (`boldgpt train configs/boldgpt_cont_demo.yaml`) narrows "
            "the gap."
        )
    rm, rp = rnd["model"]["loss"], rnd["MaskedPCA"]["loss"]
    better = "model better" if rm <= rp else "MaskedPCA better"
    return text + f" In random orders: model {rm:.3f} vs MaskedPCA {rp:.3f} ({better})."


def _completion_section(r: Report, s: dict[str, Any], fig: Path) -> None:
    comp = s["completion_r2"]
    methods = list(next(iter(comp.values())))
    r.heading("Completion of held-out maps")
    r.table(
        ["prompt", *methods],
        [[PROMPTS[how], *(comp[how][m] for m in methods)] for how in comp],
        caption=(
            f"In-mask R² of the hidden pixels of {s['num_completion_maps']} validation maps "
            "(higher is better; 0 = predicting the mean of the hidden values). 'model "
            "(query)': every hidden patch predicted directly from the observed ones in one "
            "pass (one next-position query per hidden slot over the prompt's cache; with a "
            "completion head, averaged with the head's map), "
            f"averaged over {s.get('query_orders', 1)} random orders of the prompt; 'model "
            "(autoregressive)': hidden patches predicted one after another in the fixed "
            "order, each prediction fed back as if observed; MaskedPCA: ridge on the "
            "components from the observed pixels; mean map: the training mean map"
        ),
    )
    r.text(completion_verdict(comp))
    r.figure(fig / "completions_left.png", "Completing the right hemisphere from the left one")
    r.figure(fig / "completions_prefix.png", "Completing the map from its central patches")


def completion_verdict(comp: dict[str, dict[str, float]]) -> str:
    """One paragraph: the two model methods against each other and against MaskedPCA
    for each prompt, and what limits the hemisphere prompt."""
    parts = []
    for how, r2 in comp.items():
        query, auto, pca = (
            r2.get("model (query)"),
            r2.get("model (autoregressive)"),
            r2["MaskedPCA"],
        )
        if query is None or auto is None:
            continue
        best = "one pass better" if query > auto else "autoregressive better"
        parts.append(
            f"{PROMPTS[how]}: one pass {query:+.3f}, autoregressive {auto:+.3f} ({best}); "
            f"MaskedPCA {pca:+.3f}"
        )
    text = "Completion R², " + "; ".join(parts) + ". " if parts else ""
    return text + (
        "The one pass asks each hidden slot the question shuffled-order training poses "
        "(a slot given a set of other patches) and, in a model with a completion head "
        "(the demo's has one), also asks one completion token for the whole map, and "
        "averages the two answers. Autoregressive completion instead conditions each "
        "hidden patch on the predictions already made for the others, which smooths its "
        "errors. The far question (a whole region or hemisphere observed, a slot far from "
        "it hidden) is asked of the per-slot queries in training only at the steps right "
        "after a region- or hemisphere-first order's prompt; the completion head is "
        "trained on every hidden patch at 4 cuts of each training map, which is what "
        "lifts the one pass. MaskedPCA's linear prediction uses the correlations across "
        "the map directly, fitted in closed form on 4,000 maps."
    )


def print_summary(s: dict[str, Any], md: Path, page: Path, model_dir: Path) -> None:
    """The demo's closing printout: the headline numbers and where the outputs are."""
    f, rnd = s["next_patch"]["fixed"], s["next_patch"]["random"]
    lines = [
        "",
        "validation next-patch loss (in-mask MSE, lower is better):",
        f"  model, fixed order     {f['model']['loss']:.4f}",
        f"  model, random orders   {rnd['model']['loss']:.4f}",
        f"  mean-map baseline      {f['mean map']['loss']:.4f}",
        f"  MaskedPCA next-patch   {f['MaskedPCA']['loss']:.4f} (fixed), "
        f"{rnd['MaskedPCA']['loss']:.4f} (random)",
        "completion R² of the hidden pixels (higher is better):",
    ]
    for how, scores in s["completion_r2"].items():
        cells = ", ".join(f"{name} {v:+.3f}" for name, v in scores.items())
        lines.append(f"  {PROMPTS[how]}: {cells}")
    if "images" in s:
        enc, ret = s["images"]["encoding"], s["images"]["retrieval"]
        w = max(len(name) for name in (*enc, *ret))
        lines.append("encoding r per pixel, held-out pictures (higher is better):")
        lines += [f"  {name:<{w}}  {v['r_mean']:.3f}" for name, v in enc.items() if "r_mean" in v]
        k = s["images"].get("num_candidates", 0)
        lines.append(f"retrieval top-1 map->image among {k:.0f} pictures (higher is better):")
        lines += [f"  {name:<{w}}  {v['map_to_image']:.3f}" for name, v in ret.items()]
    lines += [
        f"report: {md}",
        f"        {page}",
        f"figures: {md.parent / 'figures'}",
        f"model: {model_dir}",
        f"total time {s['timings_s']['total_s'] / 60:.1f} min",
    ]
    print("\n".join(lines), flush=True)
