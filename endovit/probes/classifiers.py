"""Frozen-feature classifiers: DINO's weighted k-NN and a linear probe (logistic regression by L-BFGS).

Both take features (N, D) and targets, class ids (N,) or 0/1 (N, C) for multi-label, and return scores
(M, C) for the test features: argmax for the class, or per-class scores for average precision. Neither
draws random numbers, so they are deterministic and leave every global RNG untouched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_scores", "linear_probe_scores", "standardize"]


@torch.no_grad()
def knn_scores(train: torch.Tensor, targets: torch.Tensor, test: torch.Tensor, *, num_classes: int, k: int = 20,
               temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Votes of the ``k`` most cosine-similar training features, each weighted ``exp(similarity / T)``.

    Multi-label scores are the weighted fraction of neighbours that carry each class.
    """
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    k = min(k, train.shape[0])
    votes = targets.float() if targets.ndim == 2 else F.one_hot(targets, num_classes).float()
    scores = []
    for start in range(0, test.shape[0], chunk):
        similarity, neighbours = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        chunk_scores = torch.einsum("mk,mkc->mc", weights, votes[neighbours])
        scores.append(chunk_scores / weights.sum(dim=1, keepdim=True) if targets.ndim == 2 else chunk_scores)
    return torch.cat(scores)


def standardize(train: torch.Tensor, test: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm without affine parameters, with the statistics of the whole training set (MAE's linear probe)."""
    mean, var = train.mean(dim=0), train.var(dim=0, unbiased=False)
    scale = (var + eps).rsqrt()
    return (train - mean) * scale, (test - mean) * scale


def linear_probe_scores(train: torch.Tensor, targets: torch.Tensor, test: torch.Tensor, *, num_classes: int,
                        l2: float = 1e-4, max_iter: int = 200) -> torch.Tensor:
    """Logistic regression on standardised features: softmax cross-entropy (sigmoid per class for multi-label)
    + ``l2/2 * |W|^2``, minimised over the whole training set by L-BFGS from zero weights.

    ``l2 = 1 / (C * N)`` is scikit-learn's ``LogisticRegression(C=C)`` on N frames. Returns probabilities.
    """
    train, test = standardize(train.float(), test.float())
    weight = torch.zeros(train.shape[1], num_classes, device=train.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=train.device, requires_grad=True)
    multilabel = targets.ndim == 2
    loss_fn = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy
    target = targets.float() if multilabel else targets
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(train @ weight + bias, target) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        logits = test @ weight + bias
        return logits.sigmoid() if multilabel else logits.softmax(dim=1)
