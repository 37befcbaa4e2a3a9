"""Rationale checks: every arithmetic step a completion writes down ("30 - 24 = 6") must be true, and
(optionally) every number the problem states must be used by one of those steps.

It knows arithmetic, not the problem: it cannot tell whether the right operation was chosen, only
that what was written adds up, so it needs no label. Composed with the self-consistency vote
(``filter.check_steps``), a sample that states false arithmetic loses its vote but still counts
towards the prompt's k, so the vote decides among samples whose reasoning is at least consistent.

>>> steps_true("30 - 24 = 6. 6 + 5 = 11. The answer is 11.")
True
>>> false_steps("30 - 24 = 7. The answer is 7.")
['30 - 24 = 7']

The second check catches the other common error of a small model, a skipped step (three steps asked,
two written), which true arithmetic and a vote among samples that all skip it would let through.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

_NUM = r"-?\d+(?:\.\d+)?"
_OP = r"[-+*/×x÷−]"
# A chain of numbers and operators followed by "= number": "3 + 4 = 7", "2 × 3 + 1 = 7", "12/4=3".
_EQUATION = re.compile(rf"(?<![\w.])({_NUM}(?:\s*{_OP}\s*{_NUM})+)\s*=\s*({_NUM})(?![\d])")
_TOKEN = re.compile(rf"{_NUM}|{_OP}")


def _value(expression: str) -> Fraction | None:
    """The value of ``expression`` (numbers and + - * / with the usual precedence); None on division by 0."""
    tokens = _TOKEN.findall(expression.replace("−", "-").replace("×", "*").replace("x", "*").replace("÷", "/"))
    # Re-glue a binary minus that the number pattern swallowed ("30 -24" reads as 30, -24).
    items: list[str] = []
    for t in tokens:
        if items and items[-1] not in "+-*/" and t.startswith("-") and len(t) > 1:
            items += ["-", t[1:]]
        else:
            items.append(t)
    terms: list[Fraction] = []
    sign, product, pending = 1, None, "*"
    try:
        for t in items:
            if t in "+-":
                terms.append(sign * product)
                sign, product, pending = (1 if t == "+" else -1), None, "*"
            elif t in "*/":
                pending = t
            else:
                n = Fraction(t)
                product = n if product is None else (product * n if pending == "*" else product / n)
        terms.append(sign * product)
    except (ZeroDivisionError, TypeError):
        return None
    return sum(terms, Fraction(0))


def false_steps(text: str) -> list[str]:
    """The equations written in ``text`` that are false, as written."""
    out = []
    for m in _EQUATION.finditer(text):
        left, right = m.group(1), Fraction(m.group(2))
        if _value(left) != right:
            out.append(m.group(0).strip())
    return out


def operands(text: str) -> list[Fraction]:
    """The numbers the equations in ``text`` compute with (their left-hand sides)."""
    return [Fraction(t) for m in _EQUATION.finditer(text) for t in re.findall(_NUM, m.group(1).replace(" ", ""))
            if t not in ("-",)]


def unused_numbers(prompt: str, completion: str) -> list[str]:
    """Numbers ``prompt`` states that no equation of ``completion`` uses (as often as stated): a solution that
    skips a step of the problem. Knows the problem's text, not its answer.

    >>> unused_numbers("Ava has 22 coins. Ava gives 22 coins away. Ava finds 9 more.", "22 - 22 = 0. The answer is 0.")
    ['9']
    """
    left = Counter(abs(x) for x in operands(completion))
    out = []
    for t in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.]\d)", prompt):
        if left[Fraction(t)]:
            left[Fraction(t)] -= 1
        else:
            out.append(t)
    return out


def steps_true(completion: str) -> bool:
    """Whether every equation written in ``completion`` is true (one with none passes)."""
    return not false_steps(completion)
