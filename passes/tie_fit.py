"""The numerics of layer tying: a weight as a matrix, the shared weight, and each layer's low-rank correction.

A tied layer computes ``x·W_shared + x·A·B`` where ``A·B`` approximates its own ``Δ = W_l − W_shared``.

- **SVD fit** (Relaxed Recursive Transformers): ``A·B`` is the truncated SVD of ``Δ``; the energy kept is
  ``Σ s_i²`` over the kept singular values divided by ``‖Δ‖²``.
- **Activation fit**: ``A·B`` minimises ``‖X(Δ − A·B)‖² + λ‖Δ − A·B‖²`` over the layer's real inputs ``X``
  (reduced-rank regression, closed form): with ``G = XᵀX + λI = L·Lᵀ``, take the truncated SVD of ``Lᵀ·Δ``
  and map it back with ``L⁻ᵀ``. The energy is measured in the same weighted norm. ``λ`` is chosen on
  held-out rows among a few values and "none" (plain SVD), so the fit never does worse than SVD there.
- A correction whose two factors would hold as many numbers as ``Δ`` itself is stored as ``Δ`` (one dense
  MatMul, exact): that is what ``rank=full`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from nasc.ir.core import Node

#: ridge strengths tried by the activation fit, relative to the mean diagonal of the inputs' Gram matrix
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1)


def weight_matrix(node: Node, w: np.ndarray) -> np.ndarray:
    """``w`` (operand 1 of ``node``) as the [in, out] matrix the layer multiplies its input rows by."""
    if node.op == "MatMul":
        return w
    if node.op == "Gemm":
        return w.T if node.attr("transB", 0) else w
    if node.op == "Conv":  # [O, I/g, kh, kw] -> [I/g*kh*kw, O]
        return w.reshape(w.shape[0], -1).T
    raise ValueError(f"no matrix view of {node.op}")


def from_matrix(node: Node, m: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The inverse of :func:`weight_matrix`: ``m`` [in, out] back in the layout of ``like``."""
    if node.op == "MatMul":
        return m.astype(like.dtype)
    if node.op == "Gemm":
        return (m.T if node.attr("transB", 0) else m).astype(like.dtype)
    return m.T.reshape(like.shape).astype(like.dtype)


def dense_is_cheaper(rows: int, cols: int, rank: int) -> bool:
    """Whether a rank-``rank`` pair of factors holds at least as many numbers as the dense [rows, cols] matrix."""
    return rank * (rows + cols) >= rows * cols


def top_svd(m: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The leading ``rank`` singular triplets of ``m`` as (U·s, Vᵀ), and the share of ‖m‖² they hold.

    From the top eigenpairs of the smaller Gram matrix (LAPACK's subset eigensolver): much faster than a full
    SVD for a truncation of the wide matrices here, and exact enough in float64; ‖m‖² is the Gram's trace.
    """
    rows, cols = m.shape
    gram = m.T @ m if cols <= rows else m @ m.T
    n = gram.shape[0]
    total = float(np.trace(gram))
    e, v = scipy.linalg.eigh(gram, subset_by_index=[n - rank, n - 1], driver="evx")
    e, v = np.clip(e[::-1], 0.0, None), v[:, ::-1]
    s = np.sqrt(e)
    energy = float(np.sum(e) / total) if total > 0 else 1.0
    if cols <= rows:  # m = U s Vᵀ with V = v: U s = m V
        return m @ v, v.T, energy
    return v * s, (v.T @ m) / np.where(s > 0, s, 1.0)[:, None], energy


@dataclass
class Inputs:
    """A layer's input statistics: Gram matrices of the centred rows (fit part and held-out part) and the mean."""

    fit: np.ndarray
    held: np.ndarray | None
    mean: np.ndarray
    rows: int
    _chol: dict[float, np.ndarray] = field(default_factory=dict, repr=False)

    @staticmethod
    def of(batches: list[np.ndarray], held_from: int) -> Inputs:
        """From row batches [n_i, in]; batches from index ``held_from`` on are held out for choosing λ."""
        allrows = np.concatenate([b.reshape(-1, b.shape[-1]) for b in batches]).astype(np.float64)
        mean = allrows.mean(axis=0)
        n_fit = sum(int(np.prod(b.shape[:-1])) for b in batches[:held_from])
        x = allrows - mean
        fit, held = x[:n_fit], x[n_fit:]
        return Inputs(fit.T @ fit, held.T @ held if len(held) else None, mean, len(allrows))

    def chol(self, lam: float) -> np.ndarray:
        """The lower Cholesky factor of the fit Gram matrix + λI (cached: Q, K and V share one input)."""
        key = float(lam)
        if key not in self._chol:
            self._chol[key] = np.linalg.cholesky(self.fit + lam * np.eye(self.fit.shape[0]))
        return self._chol[key]


@dataclass
class Correction:
    """A layer's correction: dense ``delta``, or factors ``a`` [in, r] and ``b`` [r, out]; None for none."""

    a: np.ndarray | None = None
    b: np.ndarray | None = None
    delta: np.ndarray | None = None
    rank: int = 0
    energy: float = 1.0  # share of ‖Δ‖² (in the fit's norm) that the correction reproduces
    ridge: float | None = None  # the activation fit's λ (None: plain SVD)

    def product(self, shape: tuple[int, int]) -> np.ndarray:
        if self.delta is not None:
            return self.delta
        if self.a is None or self.b is None:
            return np.zeros(shape)
        return self.a @ self.b

    @property
    def params(self) -> int:
        return sum(int(x.size) for x in (self.a, self.b, self.delta) if x is not None)


def svd_correction(delta: np.ndarray, rank: int | None) -> Correction:
    """Truncated SVD of ``delta`` at ``rank`` (None: exact). Dense when the factors would not be smaller."""
    rows, cols = delta.shape
    if not np.any(delta):
        return Correction(rank=0, energy=1.0)
    if rank is None or dense_is_cheaper(rows, cols, rank):
        return Correction(delta=delta, rank=min(rows, cols), energy=1.0)
    if rank == 0:
        return Correction(rank=0, energy=0.0)
    a, b, energy = top_svd(delta.astype(np.float64), rank)
    return Correction(a=a, b=b, rank=rank, energy=energy)


def _weighted(delta: np.ndarray, x: Inputs, lam: float, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank-``rank`` A, B minimising tr(Eᵀ(G + λI)E), E = Δ − AB; and the energy kept in that norm.
    With G + λI = L·Lᵀ the weighted problem is a plain truncation of Lᵀ·Δ, mapped back by L⁻ᵀ."""
    chol = x.chol(lam)
    us, b, energy = top_svd(chol.T @ delta, rank)
    return scipy.linalg.solve_triangular(chol.T, us, lower=False), b, energy


def _held_error(delta: np.ndarray, approx: np.ndarray, held: np.ndarray) -> float:
    e = delta - approx
    return float(np.einsum("ij,ij->", e, held @ e))


def activation_correction(delta: np.ndarray, rank: int | None, x: Inputs) -> Correction:
    """The rank-``rank`` correction that best reproduces ``x·Δ`` on the layer's inputs (see the module text)."""
    rows, cols = delta.shape
    if rank is None or dense_is_cheaper(rows, cols, rank) or rank == 0 or not np.any(delta):
        return svd_correction(delta, rank)
    d64 = delta.astype(np.float64)
    scale = max(float(np.trace(x.fit)) / rows, 1e-12)
    best = svd_correction(delta, rank)
    if x.held is None:
        a, b, energy = _weighted(d64, x, RIDGES[-1] * scale, rank)
        return Correction(a=a, b=b, rank=rank, energy=energy, ridge=RIDGES[-1])
    best_err = _held_error(d64, best.product((rows, cols)), x.held)
    for lam in RIDGES:
        try:
            a, b, energy = _weighted(d64, x, lam * scale, rank)
        except np.linalg.LinAlgError:
            continue
        err = _held_error(d64, a @ b, x.held)
        if err < best_err:
            best, best_err = Correction(a=a, b=b, rank=rank, energy=energy, ridge=lam), err
    return best


def shared_weight(mats: list[np.ndarray], init: str, inputs: list[Inputs] | None) -> np.ndarray:
    """The shared [in, out] matrix of one block from its layers' matrices.

    ``init``: "mean" (the average), "fit" (the matrix that minimises Σ_l ‖X_l(W − W_l)‖², i.e. the average
    weighted by each layer's input Gram matrix; needs ``inputs``), or a decimal index into ``mats``.
    """
    if init == "mean":
        return np.mean(np.stack(mats), axis=0)
    if init == "fit":
        assert inputs is not None
        grams = [x.fit + (x.held if x.held is not None else 0) for x in inputs]
        total = sum(grams)
        assert isinstance(total, np.ndarray)
        lam = RIDGES[1] * max(float(np.trace(total)) / total.shape[0], 1e-12)
        rhs = sum(g @ m.astype(np.float64) for g, m in zip(grams, mats, strict=True))
        return np.linalg.solve(total + lam * np.eye(total.shape[0]), rhs)
    return mats[int(init)].astype(np.float64)
