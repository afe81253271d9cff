"""The losses, each inside a module's forward (so DDP wraps it): answer tokens, the classify head, the
regression head, several label columns, soft targets and distillation."""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kit.engine.architecture import backbone_of


class AnswerLoss(torch.nn.Module):
    """Generative head: cross-entropy on the answer tokens only. The rows end with their answers
    (left padding): only the positions that predict answer tokens go through the (large) output
    layer. The loss is this module's forward, so a DistributedDataParallel wrapper sees it.
    forward returns the SUM over the batch's answer tokens; fit divides by `weight` of the
    whole global batch, so ranks that each hold a share give exactly the one-process mean."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @staticmethod
    def weight(answers):
        return sum(len(a) for a in answers)

    def answer_logits(self, inputs, answers):
        """(vocabulary logits at every position that predicts an answer token, those tokens)."""
        hidden = backbone_of(self.model)(**inputs).last_hidden_state
        width = hidden.shape[1]
        rows, positions, labels = [], [], []
        for row, answer in enumerate(answers):
            rows += [row] * len(answer)
            positions += list(range(width - len(answer) - 1, width - 1))
            labels += answer
        logits = self.model.get_output_embeddings()(hidden[rows, positions])
        return logits.float(), torch.tensor(labels, device=logits.device)

    def forward(self, inputs, answers):
        logits, labels = self.answer_logits(inputs, answers)
        return F.cross_entropy(logits, labels, reduction="sum")


class ClassifyLoss(torch.nn.Module):
    """Classification head: cross-entropy on the head's logits (optionally class-weighted)."""

    def __init__(self, model, weights=None):
        super().__init__()
        self.model, self.weights = model, weights

    def weight(self, labels):
        """What the weighted mean divides by: the rows' class weights (the row count without)."""
        return float(sum(self.weights[y] for y in labels)) if self.weights is not None else len(labels)

    def forward(self, inputs, labels):
        """The sum of the rows' (weighted) losses; see AnswerLoss."""
        logits = self.model(**inputs).logits
        return F.cross_entropy(logits.float(), torch.tensor(labels, device=logits.device), weight=self.weights,
                               reduction="sum")


class RegressionLoss(torch.nn.Module):
    """Regression head: squared error of its one output against the (standardised) target."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @staticmethod
    def weight(targets):
        return len(targets)

    def forward(self, inputs, targets):
        """The sum of the rows' squared errors; see AnswerLoss."""
        output = self.model(**inputs).logits.float()[:, 0]
        return F.mse_loss(output, torch.tensor(targets, dtype=torch.float32, device=output.device), reduction="sum")


class SeveralLabelsLoss(RegressionLoss):
    """Several 0/1 label columns: binary cross-entropy of each column's output, summed over the
    columns and the rows (fit divides by the row count)."""

    def forward(self, inputs, targets):
        logits = self.model(**inputs).logits.float()
        return F.binary_cross_entropy_with_logits(
            logits, torch.tensor(targets, dtype=torch.float32, device=logits.device), reduction="sum")


@dataclass(frozen=True)
class RowTarget:
    """A training row's target when a lever needs more than the label (kit/workflows/levers.py): the
    label (its index, a probability vector for a soft pseudo-label, or the generative head's
    answer token ids) and, for distillation, the teacher's probability per label."""
    label: object
    teacher: tuple = None


def distillation_kl(logits, teacher_probs, temperature):
    """Per row KL(teacher_T || student_T) with teacher_T = softmax(log p / T) and student_T =
    softmax(logits / T). Probabilities read from CSV files can be exactly 0: clamped before the log."""
    teacher_t = torch.softmax(torch.log(teacher_probs.clamp_min(1e-12)) / temperature, dim=-1)
    student_t = torch.log_softmax(logits / temperature, dim=-1)
    return F.kl_div(student_t, teacher_t, reduction="none").sum(-1)


def _teacher_tensor(targets, device):
    if any(t.teacher is None for t in targets):
        raise ValueError("distillation: every row needs the teacher's probabilities")
    return torch.tensor([t.teacher for t in targets], dtype=torch.float32, device=device)


class SoftClassifyLoss(ClassifyLoss):
    """Classification head with the levers: a row's label is an index (cross-entropy as
    ClassifyLoss) or a probability vector (a soft pseudo-label: cross-entropy against it), and
    with kl_weight W > 0 each row's loss is (1 - W) * CE + W * T^2 * KL(teacher_T || student_T).
    The T^2 keeps the KL gradients' scale independent of T (Hinton et al.). Class weights weigh
    the whole row (a soft row by its expected class weight). Returns the SUM, like ClassifyLoss;
    with W = 0 it is exactly ClassifyLoss's sum on the same rows."""

    def __init__(self, model, weights=None, kl_weight=0.0, temperature=1.0):
        super().__init__(model, weights)
        self.kl_weight, self.temperature = float(kl_weight), float(temperature)

    def _row_weights(self, targets):
        if self.weights is None:
            return [1.0] * len(targets)
        weights = self.weights.tolist()
        return [float(np.dot(weights, t.label)) if _is_vector(t.label) else weights[t.label] for t in targets]

    def weight(self, targets):
        return float(sum(self._row_weights(targets)))

    def forward(self, inputs, targets):
        logits = self.model(**inputs).logits.float()
        device = logits.device
        hard = [i for i, t in enumerate(targets) if not _is_vector(t.label)]
        soft = [i for i, t in enumerate(targets) if _is_vector(t.label)]
        total = logits.new_zeros(())
        if hard:
            labels = torch.tensor([targets[i].label for i in hard], device=device)
            total = total + F.cross_entropy(logits[hard], labels, weight=self.weights, reduction="sum")
        if soft:
            probs = torch.tensor([targets[i].label for i in soft], dtype=torch.float32, device=device)
            total = total + F.cross_entropy(logits[soft], probs, weight=self.weights, reduction="sum")
        if not self.kl_weight:
            return total
        kl = distillation_kl(logits, _teacher_tensor(targets, device), self.temperature)
        kl = (kl * torch.tensor(self._row_weights(targets), device=device)).sum()
        return (1 - self.kl_weight) * total + self.kl_weight * self.temperature ** 2 * kl


class DistillAnswerLoss(AnswerLoss):
    """Generative head with a teacher: (1 - W) * CE on the answer tokens + W * T^2 * KL between
    the teacher's label probabilities and the student's distribution over the label words'
    first tokens at the position that predicts the answer's first token (the distribution
    `kit predict --mode score` reads). The KL counts once per answer token of the row, so both
    terms share AnswerLoss's token-mean (`weight`); with one-token answers that is per row.
    Targets are RowTarget(answer token ids, teacher probabilities)."""

    def __init__(self, model, first_tokens, kl_weight=0.5, temperature=2.0):
        super().__init__(model)
        self.first_tokens = list(first_tokens)
        self.kl_weight, self.temperature = float(kl_weight), float(temperature)

    @staticmethod
    def weight(targets):
        return sum(len(t.label) for t in targets)

    def forward(self, inputs, targets):
        answers = [t.label for t in targets]
        logits, labels = self.answer_logits(inputs, answers)
        total = F.cross_entropy(logits, labels, reduction="sum")
        if not self.kl_weight:
            return total
        lengths = torch.tensor([len(a) for a in answers], device=logits.device)
        starts = torch.cumsum(lengths, 0) - lengths       # each row's first answer position
        first = logits[starts][:, self.first_tokens]
        kl = distillation_kl(first, _teacher_tensor(targets, logits.device), self.temperature)
        return (1 - self.kl_weight) * total + self.kl_weight * self.temperature ** 2 * (kl * lengths).sum()


def _is_vector(label):
    return isinstance(label, (list, tuple, np.ndarray))
