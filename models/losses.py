"""Training losses of the anomaly methods. Logits are N×C×H×W; labels N×H×W in the shard convention
(trainIds 0-18, ``ANOMALY_ID`` 254, ``IGNORE_ID`` 255).

Normalisation: the papers write sums over pixels; like the reference code, every term here is a *mean* over
the pixels it ranges over (so learning rates do not depend on the crop size), and a term whose pixel set is
empty in a batch contributes 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.scores import energy as free_energy
from models.scores import entropy as softmax_entropy
from models.scores import m2a as m2a_score
from models.scores import rba as rba_score
from models.scores import smooth
from schemas.labels import ANOMALY as ANOMALY_ID
from schemas.labels import VOID as IGNORE_ID


def logsumexp_energy(logits: torch.Tensor) -> torch.Tensor:
    """The energy response E(y) = log Σ_c exp(y_c) (the negated free energy, ``-scores.energy``), N×H×W."""
    return -free_energy(logits)


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    anomaly = labels == ANOMALY_ID
    inlier = ~anomaly & (labels != IGNORE_ID)
    return inlier, anomaly


def _mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask].mean() if mask.any() else x.sum() * 0.0  # keeps the graph when a term is empty


def rpl_loss(
    logits: torch.Tensor, frozen: torch.Tensor, labels: torch.Tensor, t: float = 1.0, out_weight: float = 0.05
) -> dict[str, torch.Tensor]:
    """RPL: ℓ = ℓ_in + 0.05·ℓ_out with
    ℓ_in = mean over inlier pixels [ CE(onehot(argmax ỹ), ŷ) + ((H(ỹ) − H(ŷ)) / t)² ] and
    ℓ_out = mean over anomaly pixels max(−E(ŷ), 0) = relu(logsumexp ŷ).
    "Inlier" excludes void (255) as well as anomaly (254) pixels, as RPL's code does."""
    inlier, anomaly = _masks(labels)
    frozen = frozen.detach()
    ce = F.cross_entropy(logits, frozen.argmax(1), reduction="none")
    ent = ((softmax_entropy(frozen) - softmax_entropy(logits)) / t) ** 2
    out = F.relu(logsumexp_energy(logits))
    parts = {"in_ce": _mean(ce, inlier), "in_entropy": _mean(ent, inlier), "out_energy": _mean(out, anomaly)}
    parts["loss"] = parts["in_ce"] + parts["in_entropy"] + out_weight * parts["out_energy"]
    return parts


def eel_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """DiffEEL's energy-entropy learning (Eq. 7). With E(ŷ) = log Σ_c exp ŷ_c and the anomaly probability
    p = sigmoid(−E):

        ℓ_eel = mean over anomaly pixels [ −log p − α·H(ŷ) ] + mean over inlier pixels [ −log(1 − p) + α·H(ŷ) ]

    Our reading of the paper's ambiguously typeset Eq. 7: a binary cross-entropy that pushes the energy response
    down on anomalies and up on inliers, plus an entropy term that is rewarded on anomalies (flat softmax) and
    penalised on inliers (confident softmax). −log sigmoid(−E) = softplus(E), −log(1 − sigmoid(−E)) =
    softplus(−E), which is how it is computed (stable for any E)."""
    inlier, anomaly = _masks(labels)
    e = logsumexp_energy(logits)
    h = softmax_entropy(logits)
    parts = {
        "eel_anomaly": _mean(F.softplus(e) - alpha * h, anomaly),
        "eel_inlier": _mean(F.softplus(-e) + alpha * h, inlier),
    }
    parts["eel"] = parts["eel_anomaly"] + parts["eel_inlier"]
    return parts


def consistency_loss(logits: torch.Tensor, frozen: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """DiffEEL's L_cons = mean over inlier pixels [ CE(ỹ, ŷ) + KL(ỹ ‖ ŷ) + (H(ỹ) − H(ŷ))² ].
    CE(ỹ, ŷ) is read as RPL's: cross-entropy of ŷ against the frozen prediction argmax ỹ (with soft targets
    CE + KL would just count the KL twice)."""
    inlier, _ = _masks(labels)
    frozen = frozen.detach()
    logp_frozen = F.log_softmax(frozen, 1)
    logp = F.log_softmax(logits, 1)
    ce = F.cross_entropy(logits, frozen.argmax(1), reduction="none")
    kl = (logp_frozen.exp() * (logp_frozen - logp)).sum(1)
    ent = (softmax_entropy(frozen) - softmax_entropy(logits)) ** 2
    parts = {"cons_ce": _mean(ce, inlier), "cons_kl": _mean(kl, inlier), "cons_entropy": _mean(ent, inlier)}
    parts["cons"] = parts["cons_ce"] + parts["cons_kl"] + parts["cons_entropy"]
    return parts


def rpl_eel_loss(
    logits: torch.Tensor, frozen: torch.Tensor, labels: torch.Tensor, lam: float = 0.05, alpha: float = 1.0
) -> dict[str, torch.Tensor]:
    """DiffEEL on RPL: L = L_cons + λ·ℓ_eel, λ = 0.05."""
    parts = consistency_loss(logits, frozen, labels) | eel_loss(logits, labels, alpha)
    parts["loss"] = parts["cons"] + lam * parts["eel"]
    return parts


def supervised_contrastive(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast: torch.Tensor,
    contrast_labels: torch.Tensor,
    tau: float = 0.1,
    anchors_in_contrast: bool = True,
) -> torch.Tensor:
    """Supervised InfoNCE over L2-normalised embeddings (rows). For anchor a with positives P(a) (same label,
    itself excluded) and negatives N(a) (other label):

        ℓ_a = −1/|P(a)| Σ_{p∈P(a)} log( exp(s_ap/τ) / (exp(s_ap/τ) + Σ_{n∈N(a)} exp(s_an/τ)) ),  s = cosine

    averaged over anchors with at least one positive. With ``anchors_in_contrast`` the first rows of
    ``contrast`` are the anchors themselves (CoroCL's layout), so the self pair is not a positive."""
    a = F.normalize(anchors, dim=1)
    c = F.normalize(contrast, dim=1)
    logits = a @ c.T / tau
    logits = logits - logits.max(1, keepdim=True).values.detach()
    same = anchor_labels[:, None] == contrast_labels[None, :]
    pos = same.clone()
    if anchors_in_contrast:
        idx = torch.arange(len(a), device=a.device)
        pos[idx, idx] = False
    exp = logits.exp()
    neg_sum = (exp * (~same)).sum(1, keepdim=True)
    log_prob = logits - torch.log(exp + neg_sum)
    n_pos = pos.sum(1)
    keep = n_pos > 0
    if not keep.any():
        return anchors.sum() * 0.0
    per_anchor = (log_prob * pos).sum(1)[keep] / n_pos[keep]
    return -per_anchor.mean()


def corocl_loss(
    city_emb: torch.Tensor,
    city_labels: torch.Tensor,
    ctx_emb: torch.Tensor,
    ctx_labels: torch.Tensor,
    tau: float = 0.10,
    max_views: int = 512,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CoroCL (RPL+CoroCL): anchors are n anomaly and n inlier pixel embeddings of the composites; the contrast
    set adds n anomaly and n inlier embeddings of the object-context images; n = min(max_views, each pool's
    size). Labels are nearest-resized to the embedding grid; void pixels take no part."""

    def pools(emb, labels):
        labels = F.interpolate(labels[:, None].float(), size=emb.shape[2:], mode="nearest")[:, 0].long()
        flat = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
        lab = labels.reshape(-1)
        return flat[lab == ANOMALY_ID], flat[(lab != ANOMALY_ID) & (lab != IGNORE_ID)]

    city_pos, city_neg = pools(city_emb, city_labels)
    ctx_pos, ctx_neg = pools(ctx_emb, ctx_labels)
    n = min(max_views, len(city_pos), len(city_neg), len(ctx_pos), len(ctx_neg))
    if n == 0:
        return city_emb.sum() * 0.0

    def pick(x):
        return x[torch.randperm(len(x), generator=generator, device="cpu")[:n].to(x.device)]

    anchors = torch.cat([pick(city_pos), pick(city_neg)])
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).to(anchors.device)
    contrast = torch.cat([anchors, pick(ctx_pos), pick(ctx_neg)])
    c_labels = torch.cat([labels, labels])
    return supervised_contrastive(anchors, labels, contrast, c_labels, tau, anchors_in_contrast=True)


# ---- SLEEG (Tu et al., "Self-supervised Likelihood Estimation with Energy Guidance for Anomaly Segmentation in
# Urban Scenes", AAAI 2024). Targets o: 0 normal, 1 anomaly, IGNORE_ID ignored; h: the OoD head's N×2×H×W logits.


def jem(frozen: torch.Tensor) -> torch.Tensor:
    """JEM(z) = −log Σ_y exp(g_φ(z))[y] (Eq. 8): the free energy of the frozen logits (higher = less likely)."""
    return -torch.logsumexp(frozen.float(), dim=1)


def tae_loss(head: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """TAE: ℓ_a = cross-entropy of p_a(o|z) = softmax(h_θ(z)) against o, as a mean over the pixels that are not
    ignored (0 when all are)."""
    valid = target != IGNORE_ID
    if not valid.any():
        return head.sum() * 0.0
    return F.cross_entropy(head.float(), target.long(), ignore_index=IGNORE_ID)


def tore_loss(head: torch.Tensor, frozen: torch.Tensor, target: torch.Tensor, gamma: float = 15.0) -> torch.Tensor:
    """TORE (Eq. 8), per image then averaged over the images that have both normal and anomaly pixels:

        ℓ_o = max(0, E_id[h_θ(z)[1]] − E_ood[h_θ(z)[1]] + γ̂),   γ̂ = γ + E_id[JEM(z)] − E_ood[JEM(z)]

    i.e. the likelihood log p_t(o=1|z) = h_θ(z)[1] + JEM(z) + C must be ``gamma`` higher on anomalies than on
    normal pixels on average. JEM comes from the frozen logits (no gradient). An image without anomaly (or
    without normal) pixels has no margin to enforce and contributes nothing; with none at all ℓ_o = 0."""
    h1 = head[:, 1].float()
    energy = jem(frozen.detach())
    losses = []
    for b in range(head.shape[0]):
        ind, ood = target[b] == 0, target[b] == 1
        if not (ind.any() and ood.any()):
            continue
        margin = gamma + energy[b][ind].mean() - energy[b][ood].mean()
        losses.append(F.relu(h1[b][ind].mean() - h1[b][ood].mean() + margin))
    return torch.stack(losses).mean() if losses else head.sum() * 0.0


def sleeg_score(head: torch.Tensor, frozen: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """A(x) = log p_a(o=1|z) + λ·log p_t(o=1|z) (Eq. 10 and the inference score), with log p_a = log_softmax(h)[1]
    and log p_t = h[1] + JEM(z) (the constant C dropped: it moves no threshold and no ranking). Higher = anomalous."""
    head = head.float()
    return F.log_softmax(head, dim=1)[:, 1] + lam * (head[:, 1] + jem(frozen))


def otsu_threshold(values: torch.Tensor, thresholds: int = 25) -> torch.Tensor:
    """η* of Eq. 11: among ``thresholds`` levels evenly spaced strictly inside (min, max) of ``values``, the one
    that minimises the summed within-group variance Σ_{v<η}(v − μ_<)² + Σ_{v≥η}(v − μ_≥)² (Otsu's criterion, as a
    grid search; the authors' code searches 25 levels). Constant values give their value (nothing is split)."""
    v = values.detach().double().flatten()
    lo, hi = v.min(), v.max()
    if hi <= lo:
        return lo.to(values.dtype)
    levels = lo + (hi - lo) * torch.arange(1, thresholds + 1, dtype=v.dtype, device=v.device) / (thresholds + 1)
    s, _ = torch.sort(v)
    zero = torch.zeros(1, dtype=v.dtype, device=v.device)
    c1, c2 = torch.cat([zero, s.cumsum(0)]), torch.cat([zero, (s * s).cumsum(0)])
    n = s.numel()
    # number of values < level; inside (min, max) both groups are non-empty, unless a level rounds onto min or max
    k = torch.searchsorted(s, levels).clamp(1, n - 1)
    below = c2[k] - c1[k] ** 2 / k
    above = (c2[n] - c2[k]) - (c1[n] - c1[k]) ** 2 / (n - k)
    return levels[torch.argmin(below + above)].to(values.dtype)


def refine_candidates(
    score: torch.Tensor, candidates: torch.Tensor, base: torch.Tensor, thresholds: int = 25
) -> torch.Tensor:
    """Adaptive mask refinement (Eq. 10–11), per image: inside the pasted polygons ``candidates`` (N×H×W bool)
    pixels whose ``score`` (N×H×W; A, or JEM during the warm-up) is ≥ η* of that image's candidate pixels become
    anomaly (1); the other candidate pixels are ignored. Outside, ``base`` (N×H×W targets) is kept."""
    target = base.clone()
    for b in range(score.shape[0]):
        cand = candidates[b]
        if not cand.any():
            continue
        eta = otsu_threshold(score[b][cand], thresholds)
        keep = score[b] >= eta
        target[b][cand & keep] = 1
        target[b][cand & ~keep] = IGNORE_ID
    return target


# ---- PEBAL (Tian et al., "Pixel-wise Energy-biased Abstention Learning for Anomaly Segmentation on Complex Urban
# Driving Scenes", ECCV 2022). logits: N×(C+1)×H×W, the last channel the abstention; labels in the shard convention.


def _energy_c(logits: torch.Tensor) -> torch.Tensor:
    """E(x) = −log Σ_{c<C} exp f_c(x): the free energy of the C class logits (the abstention left out)."""
    return -torch.logsumexp(logits[:, :-1].float(), dim=1)


def pebal_energy_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    m_in: float = -12.0,
    m_out: float = -6.0,
    sparsity: float = 5e-4,
    smoothness: float = 3e-6,
) -> dict[str, torch.Tensor]:
    """PEBAL's energy regulariser (Eq. 5, as its authors' code computes it):

        ℓ_e = ½·[mean_in relu(E − m_in)² + mean_out relu(m_out − E)²]     (mean_in alone when no anomaly pixel)
        ℓ_sparse = sparsity · ‖E_out‖₂                                     (the L2 norm over anomaly pixels)
        ℓ_smooth = smoothness · ½ Σ_{all pixels} [(E_{i+1,j} − E_{i,j})² + (E_{i,j+1} − E_{i,j})²]

    with m_in = −12, m_out = −6. Inlier pixels exclude void; the smoothness sum runs over every pixel."""
    energy = _energy_c(logits)
    inlier, anomaly = _masks(labels)
    e_in = F.relu(energy[inlier] - m_in).pow(2)
    hinge_in = e_in.mean() if inlier.any() else energy.sum() * 0.0
    if anomaly.any():
        hinge = 0.5 * (hinge_in + F.relu(m_out - energy[anomaly]).pow(2).mean())
        sparse = sparsity * torch.linalg.vector_norm(energy[anomaly])
    else:
        hinge, sparse = hinge_in, energy.sum() * 0.0
    dy = energy[:, 1:, :] - energy[:, :-1, :]
    dx = energy[:, :, 1:] - energy[:, :, :-1]
    smooth = smoothness * 0.5 * (dy.pow(2).sum() + dx.pow(2).sum())
    return {"energy_hinge": hinge, "energy_sparse": sparse, "energy_smooth": smooth, "energy": hinge + sparse + smooth}


def energy_reward(logits: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """PEBAL's pixel-wise reward a(x) = (log Σ_{c<C} exp f_c(x))², Gaussian-smoothed (7×7, σ = 1) per image, as in
    its authors' code (not detached). Floored at ``floor`` so the abstention term p_{C}/a stays finite."""
    return smooth(_energy_c(logits).pow(2)).clamp_min(floor)


def gambler_loss(logits: torch.Tensor, labels: torch.Tensor, out_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """PEBAL's abstention (gambler) loss (Eq. 3–4) with p = softmax over all C + 1 channels and the energy reward a:

        gambler_in  = −mean_in  log(p_y + p_{C}/a)
        gambler_out = −out_weight · mean_{out, c<C} log(p_c + p_{C}/a)        (0 when no anomaly pixel)

    so inliers bet on their class, anomalies on abstaining (the authors' code; out_weight 0.1, log clamped at 1e-7
    on anomalies). Inlier pixels exclude void."""
    p = F.softmax(logits.float(), dim=1)
    abstain = (p[:, -1] / energy_reward(logits)).unsqueeze(1)
    inlier, anomaly = _masks(labels)
    y = labels.clamp(max=logits.shape[1] - 2).long().unsqueeze(1)  # any index for non-inliers; masked out
    true = p.gather(1, y)[:, 0]
    g_in = -_mean(torch.log((true + abstain[:, 0]).clamp_min(1e-7)), inlier)
    if anomaly.any():
        out = torch.log((p[:, :-1] + abstain).clamp_min(1e-7))  # N×C×H×W
        g_out = -out_weight * out.permute(0, 2, 3, 1)[anomaly].mean()
    else:
        g_out = logits.sum() * 0.0
    return {"gambler_in": g_in, "gambler_out": g_out}


def pebal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    energy_weight: float = 0.1,
    m_in: float = -12.0,
    m_out: float = -6.0,
    sparsity: float = 5e-4,
    smoothness: float = 3e-6,
    out_weight: float = 0.1,
) -> dict[str, torch.Tensor]:
    """PEBAL's total: gambler_in + gambler_out + energy_weight · ℓ_energy (``gambler_loss``, ``pebal_energy_loss``)."""
    parts = gambler_loss(logits, labels, out_weight) | pebal_energy_loss(
        logits, labels, m_in, m_out, sparsity, smoothness
    )
    parts["loss"] = parts["gambler_in"] + parts["gambler_out"] + energy_weight * parts["energy"]
    return parts


# ---- top-K one-vs-rest fine-tuning (Zhang et al., "Anomaly-Aware Semantic Segmentation via Style-Aligned OoD
# Augmentation"). logits: N×C×h×w at the classifier's resolution (before the final upsampling); labels at that size.


def topk_ovr_loss(logits: torch.Tensor, labels: torch.Tensor, k: int = 5, s: float = 2.0) -> torch.Tensor:
    """L_ood = 1/(K·|N_ood|) Σ_{i∈N_ood} Σ_{k∈topK(i)} −log σ(−s·λ_{i,k}): on every anomaly pixel the K largest
    class logits are pushed below zero, each as a one-vs-rest "not this class" (−log σ(−s·λ) = softplus(s·λ)).
    Ties among the top K do not matter: the loss depends on the values only. 0 when there is no anomaly pixel."""
    anomaly = labels == ANOMALY_ID
    if not anomaly.any():
        return logits.sum() * 0.0
    lam = logits.float().permute(0, 2, 3, 1)[anomaly]  # |N_ood|×C
    top = lam.topk(min(k, lam.shape[1]), dim=1).values
    return F.softplus(s * top).mean()


def ovr_loss(
    logits: torch.Tensor, labels: torch.Tensor, gamma: float = 0.05, k: int = 5, s: float = 2.0
) -> dict[str, torch.Tensor]:
    """L_all = L_id + γ·L_ood, L_id the cross-entropy on inlier pixels (void and anomaly excluded)."""
    inlier, _ = _masks(labels)
    ce = F.cross_entropy(logits.float(), labels.clamp(max=logits.shape[1] - 1).long(), reduction="none")
    parts = {"ce": _mean(ce, inlier), "ood": topk_ovr_loss(logits, labels, k, s)}
    parts["loss"] = parts["ce"] + gamma * parts["ood"]
    return parts


def _squared_hinge(inlier_term: torch.Tensor, outlier_term: torch.Tensor, anomaly: torch.Tensor) -> torch.Tensor:
    """The outlier losses of RbA's and Mask2Anomaly's code: the inlier term alone, or, when the batch has anomaly
    pixels, half the sum of both means."""
    if not anomaly.any():
        return inlier_term
    return 0.5 * (inlier_term + outlier_term)


def rba_loss(
    scores: torch.Tensor, labels: torch.Tensor, inlier_margin: float = 0.0, outlier_margin: float = 5.0
) -> dict[str, torch.Tensor]:
    """RbA's outlier loss (Nayal et al., ICCV 2023, Eq. 6), a squared hinge on s = RbA(x) = −Σ_k tanh L_k:

        ℓ = ½ [ mean over inlier pixels relu(s − τ_in)²  +  mean over anomaly pixels relu(τ_out − s)² ]

    (the inlier mean alone in a batch without anomaly pixels), with the released checkpoint's τ_in = 0 and
    τ_out = 5 (``swin_b_1dl_rba_ood_coco/config.yaml``). As L_k ≥ 0, s ≤ 0: with these margins the inlier term
    is 0 and the outlier term (5 + Σ tanh L_k)² pulls every class score of an anomaly pixel to 0. ``scores``: L at
    the labels' size."""
    inlier, anomaly = _masks(labels)
    s = rba_score(scores)
    parts = {
        "rba_inlier": _mean(F.relu(s - inlier_margin) ** 2, inlier),
        "rba_outlier": _mean(F.relu(outlier_margin - s) ** 2, anomaly),
    }
    parts["rba"] = _squared_hinge(parts["rba_inlier"], parts["rba_outlier"], anomaly)
    return parts


def m2a_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> dict[str, torch.Tensor]:
    """Mask2Anomaly's contrastive margin loss (Rai et al., ICCV 2023, Sec. 3.2, "mask contrastive learning"), on
    the anomaly score s = 1 − max_k L_k its inference uses:

        ℓ = ½ [ mean over inlier pixels s²  +  mean over anomaly pixels relu(m − s)² ],  m = 1

    (the inlier mean alone without anomaly pixels). Deliberate deviation: the authors' code takes s = −max_k L_k,
    with which both terms pull max_k L_k towards 0; on 1 − max_k L_k the terms oppose as the paper describes
    (inliers to max_k L_k = 1, anomalies to max_k L_k ≤ 1 − m). ``scores``: L at the labels' size."""
    inlier, anomaly = _masks(labels)
    s = m2a_score(scores)
    parts = {"m2a_inlier": _mean(s**2, inlier), "m2a_outlier": _mean(F.relu(margin - s) ** 2, anomaly)}
    parts["m2a"] = _squared_hinge(parts["m2a_inlier"], parts["m2a_outlier"], anomaly)
    return parts
