"""What the bench modules share: the versions, medians and number formats."""
import statistics

VERSION = "0.6.12"
OLD = "0.6.11"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"


def rng(xs, nd=1):
    xs = [x for x in xs if x is not None]
    return f"{f(med(xs), nd)} [{f(min(xs), nd)}–{f(max(xs), nd)}]" if xs else "–"


def samples(rows):
    """The per-run samples of synthetic rows, as lines of the generated block."""
    o = ["Per-run samples (ms):", ""]
    for r in rows:
        o.append(f"- {r['name']}: ours {', '.join(f(x) for x in r['ours'])}; "
                 f"theirs {', '.join(f(x) for x in r['theirs'])}")
    return o + [""]
