"""The arithmetic recipe: multi-digit addition with answers the recipe can verify.

Format (chosen because small transformers learn carries far better least-significant digit first):
operands are zero-padded to ``width`` digits and written reversed; the answer is padded to
``width + 1`` digits and reversed too. With width 3, ``123 + 45`` becomes prompt ``321+540=`` and
completion ``8610``. Every prompt and every answer has a fixed length, so batches need no padding.

The recipe knows true answers, but the loop only asks for them to validate and to report how precise
the filter was; the pool handed to sampling and filtering carries no answers.
"""

from __future__ import annotations

import random

import pandas as pd

from selffeed.config import ArithmeticConfig

CHARS = "0123456789+="


def encode(a: int, b: int, width: int) -> str:
    """Prompt for ``a + b``: ``encode(123, 45, 3) == '321+540='``."""
    return f"{a:0{width}d}"[::-1] + "+" + f"{b:0{width}d}"[::-1] + "="


def decode(prompt: str) -> tuple[int, int]:
    """Operands of a prompt: ``decode('321+540=') == (123, 45)``."""
    left, right = prompt.rstrip("=").split("+")
    return int(left[::-1]), int(right[::-1])


def answer_text(total: int, width: int) -> str:
    """Completion for a sum: ``answer_text(168, 3) == '8610'``."""
    return f"{total:0{width + 1}d}"[::-1]


def true_completion(prompt: str, width: int) -> str:
    a, b = decode(prompt)
    return answer_text(a + b, width)


def swapped(prompt: str) -> list[str]:
    """Equivalent views of a prompt: ``b+a`` for ``a+b`` (none when both operands are equal).

    >>> swapped('321+540=')
    ['540+321=']
    """
    left, right = prompt.rstrip("=").split("+")
    return [] if left == right else [f"{right}+{left}="]


def offset(prompt: str, index: int) -> str | None:
    """The problem ``a' + b`` for ``a + b``: a new first operand with the same digit count, drawn from
    the prompt and ``index`` (so a prompt's views never change between runs); its sum differs from
    ``a + b`` by the known ``a' - a`` (see :func:`view_answer`). None when no other ``a'`` exists.

    >>> offset('321+540=', 0)
    '372+540='
    """
    a, b = decode(prompt)
    width = len(prompt.split("+")[0])
    digits = digits_of(a, b)
    rng = random.Random(f"{prompt}|{index}")
    for _ in range(64):
        a2 = rng.randint(0, 10**digits - 1)
        if a2 != a and digits_of(a2, b) == digits:
            return encode(a2, b, width)
    return None


def views(prompt: str, offsets: int = 0) -> list[str]:
    """Views of ``a+b`` whose answers are tied to its answer: ``b+a``, then ``offsets`` problems
    ``a'+b`` (see :func:`offset`), each in both orders. A model's systematic errors (a digit it
    favours, a carry it drops) land on different digits of different sums, so they rarely agree
    once mapped back by :func:`view_answer`, while right answers always do.

    >>> views('321+540=', offsets=1)
    ['540+321=', '372+540=', '540+372=']
    """
    out = swapped(prompt)
    for i in range(offsets):
        o = offset(prompt, i)
        if o is not None and o not in out:
            out += [o] + [v for v in swapped(o) if v != prompt and v not in out]
    return out


def view_answer(original: str, view: str, answer: str | None, width: int) -> str | None:
    """The answer to ``original`` that ``answer`` to ``view`` implies: the view's sum minus how far its
    operands are from the original's. None when malformed or out of range.

    >>> view_answer('321+540=', '372+540=', answer_text(273 + 45, 3), 3) == answer_text(123 + 45, 3)
    True
    """
    if answer is None:
        return None
    (a, b), (a2, b2) = decode(original), decode(view)
    total = int(answer[::-1]) - ((a2 + b2) - (a + b))
    return answer_text(total, width) if 0 <= total < 10 ** (width + 1) else None


def parse_answer(completion: str, width: int) -> str | None:
    """The answer of a completion if it is well-formed (``width + 1`` digits), else None."""
    text = completion.strip()
    if len(text) != width + 1 or not text.isdigit():
        return None
    return text


def digits_of(a: int, b: int) -> int:
    """Difficulty bucket: the digit count of the longer operand."""
    return max(len(str(a)), len(str(b)))


def _draw(rng: random.Random, digits: int) -> tuple[int, int]:
    # Both operands have at most `digits` digits and at least one has exactly that many.
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    hi = 10**digits - 1
    a = rng.randint(lo, hi)
    b = rng.randint(0, hi)
    return (a, b) if rng.random() < 0.5 else (b, a)


def count_problems(digits: int) -> int:
    """How many ordered pairs (a, b) have exactly ``digits`` digits in the longer operand."""
    return 10 ** (2 * digits) - (10 ** (2 * (digits - 1)) if digits > 1 else 0)


def _problems(
    rng: random.Random, digits: list[int], n: int, width: int, taken: set[str], field: str
) -> pd.DataFrame:
    """``n`` distinct problems spread evenly over ``digits``, none of them in ``taken``."""
    if not digits:
        raise ValueError(f"arithmetic.{field}: needs at least one digit count")
    for d in digits:
        if not 1 <= d <= width:
            raise ValueError(f"arithmetic.{field}: digit count {d} must be between 1 and width={width}")
    quotas = {d: n // len(digits) + (1 if i < n % len(digits) else 0) for i, d in enumerate(digits)}
    rows = []
    for d, quota in quotas.items():
        used = sum(1 for p in taken if digits_of(*decode(p)) == d)
        if quota > count_problems(d) - used:
            raise ValueError(
                f"arithmetic.{field}: asks for {quota} {d}-digit problems but only "
                f"{count_problems(d) - used} distinct ones are left"
            )
        got = 0
        while got < quota:
            a, b = _draw(rng, d)
            prompt = encode(a, b, width)
            if prompt in taken:
                continue
            taken.add(prompt)
            rows.append({"prompt": prompt, "difficulty": d})
            got += 1
    return pd.DataFrame(rows, columns=["prompt", "difficulty"])


def make_splits(cfg: ArithmeticConfig, seed: int) -> dict[str, pd.DataFrame]:
    """Disjoint ``seed`` (labelled), ``pool`` (unlabelled), ``val`` and ``test`` (held-out, labelled) frames.

    ``pool`` has ``pool_per_round * pool_slices`` prompts per difficulty of ``pool_digits`` and a
    ``slice`` column (0..pool_slices-1 within each difficulty). ``val`` is drawn last, so adding it
    left the other splits' draws as they were.
    """
    rng = random.Random(seed)
    taken: set[str] = set()
    # Test first, so that the seed and the pool never contain a held-out problem.
    test = _problems(rng, cfg.test_digits, cfg.test_per_digits * len(cfg.test_digits), cfg.width, taken, "test_digits")
    seed_df = _problems(rng, cfg.seed_digits, cfg.seed_size, cfg.width, taken, "seed_digits")
    # Every pool difficulty gets a full set of slices, so a curriculum can pick any mix of them.
    per = cfg.pool_per_round * cfg.pool_slices
    pool = _problems(rng, cfg.pool_digits, per * len(cfg.pool_digits), cfg.width, taken, "pool_digits")
    pool["slice"] = pool.groupby("difficulty").cumcount() // cfg.pool_per_round
    val = _problems(rng, cfg.test_digits, cfg.val_per_digits * len(cfg.test_digits), cfg.width, taken, "val_per_digits")
    for df in (test, val, seed_df):
        df["completion"] = [true_completion(p, cfg.width) for p in df["prompt"]]
    pool.insert(0, "prompt_id", range(len(pool)))
    return {"seed": seed_df, "pool": pool, "val": val, "test": test}


def max_new_tokens(cfg: ArithmeticConfig) -> int:
    """Answer digits plus the end-of-sequence token."""
    return cfg.width + 2
