"""`reelmask eval PRED GT`: scores as a table per sequence and object, or as one JSON document."""

from __future__ import annotations

import argparse
import json

from core.commands import command, stderr_console


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", metavar="PRED", help="predictions: an output folder (masks/, alpha/), a folder of PNGs, "
                                                "or a folder of such sequences")
    p.add_argument("gt", metavar="GT", help="ground truth in the same layout (palette or 0/255 masks, 8-bit alphas)")
    p.add_argument("--json", action="store_true", help='machine-readable: {"sequences": {...}, "J&F", "J", "F", '
                                                       '"mIoU", "mattes"}; the table\'s "rec" and "dec" are '
                                                       'recall and decay')
    p.add_argument("--skip-first-last", action="store_true",
                   help="leave each sequence's first and last mask frames out, as the DAVIS semi-supervised "
                        "benchmark does (its first frame is the mask SAM2 was given)")


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


@command(_eval_args)
def cmd_eval(args: argparse.Namespace) -> int:
    """Score predicted masks or alpha mattes against ground truth (DAVIS J&F, mIoU; SAD, MSE, Grad, Conn, dtSSD).

    Masks (palette PNGs or 0/255 grayscale; object ids matched by value): region similarity J
    (IoU, an empty prediction of an empty object counts 1), boundary accuracy F (tolerance 0.008
    of the image diagonal), each as mean, recall and decay per object, per sequence and overall,
    as the DAVIS 2017 benchmark defines them; J&F is their mean, mIoU the mean J over objects and
    frames. Palette index 255 in GT masks is DAVIS's "void" (not annotated) and is left out of
    both masks; in a 0/255 grayscale mask 255 is the object. Every GT frame is scored unless
    --skip-first-last (the DAVIS semi-supervised protocol). Alpha mattes (alpha/ or pha/ in GT): SAD, MSE, gradient and connectivity errors per
    frame, dtSSD per sequence. Frames pair by file name; a GT frame without a prediction counts
    as an empty one and is listed as missing; predictions without GT are listed and ignored. A
    folder of sequence folders gives one row per sequence and the overall means.

    example: reelmask eval outbox/dog data/dog/masks --json
    """
    from core.evaluate.report import evaluate_sequences, summarise

    results = list(evaluate_sequences(args.pred, args.gt, skip_first_last=args.skip_first_last))
    doc = summarise(results)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "J" in doc:
        table = Table(title=f"masks: {args.pred} vs {args.gt}", box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True)
        for col in ("sequence (frames)", "obj", "J", "J rec", "J dec", "F", "F rec", "F dec", "J&F", "mIoU"):
            text = col in ("sequence (frames)", "obj")
            table.add_column(col, justify="left" if text else "right", no_wrap=not text, overflow="fold",
                             min_width=10 if col.startswith("seq") else None)

        def row(name: str, obj: str, s: dict, miou=None, **style) -> None:
            table.add_row(name, obj, *(_fmt(s["J"][k]) for k in ("mean", "recall", "decay")),
                          *(_fmt(s["F"][k]) for k in ("mean", "recall", "decay")), _fmt(s["J&F"]),
                          _fmt(miou), **style)

        for name, seq in doc["sequences"].items():
            if "objects" not in seq:
                continue
            row(f"{name} ({seq['frames']})", "all", seq, seq["mIoU"], style="bold")
            for obj, o in seq["objects"].items():
                row("", obj, o)
        if len(doc["sequences"]) > 1:
            row(f"overall ({sum(s['frames'] for s in doc['sequences'].values())})", "all", doc, doc["mIoU"],
                style="bold green")
        console.print(table)
    if "mattes" in doc:
        table = Table(title=f"alpha mattes: {args.pred} vs {args.gt}", box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True)
        for col in ("sequence", "frames", "SAD", "MSE", "Grad", "Conn", "dtSSD"):
            table.add_column(col, justify="left" if col == "sequence" else "right", no_wrap=col != "sequence",
                             overflow="fold")
        rows = [(n, s["mattes"]) for n, s in doc["sequences"].items() if "mattes" in s]
        if len(rows) > 1:
            rows.append(("overall", doc["mattes"]))
        for name, m in rows:
            table.add_row(name, str(m["frames"]), *(_fmt(m[k], ".4g") for k in ("SAD", "MSE", "Grad", "Conn", "dtSSD")))
        console.print(table)
    warn = stderr_console()
    for name, seq in doc["sequences"].items():
        if seq["missing"]:
            warn.print(f"[yellow]warning:[/] {name}: {len(seq['missing'])} GT frame(s) without a prediction, "
                       f"scored as empty: {', '.join(seq['missing'][:5])}{' ...' if len(seq['missing']) > 5 else ''}")
        if seq["extra"]:
            warn.print(f"[dim]{name}: {len(seq['extra'])} predicted frame(s) without GT ignored")
    return 0
