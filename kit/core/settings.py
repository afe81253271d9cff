"""The model and training settings (ModelArgs, TrainArgs) and their choices, importable without torch."""
from dataclasses import dataclass


@dataclass
class TrainArgs:
    lr: float = 1e-3
    epochs: float = 2.0
    max_steps: int = 0           # 0: derived from epochs
    batch_size: int = 16
    grad_accum: int = 1
    warmup: float = 0.06         # fraction of steps
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50   # steps; 0 disables
    class_weights: bool = False
    frozen_cache_gb: float = 0   # budget for the frozen lower blocks' states: the disk cache's (0: 20 GB or half
                                 # the free disk), or with state_cache off this fit's RAM (0: half the free RAM)
    state_cache: bool = True     # keep those states on disk for every later fit and prediction (kit/engine/states.py)
    # the leaderboard levers (kit/workflows/levers.py); the fingerprints are filled in when a run starts,
    # from the probabilities actually used, so retraining a teacher changes the student's key
    pseudo: str = None           # RUN[:SPLIT]: pseudo-labels from RUN's predictions of SPLIT (default test)
    pseudo_threshold: float = 0.9   # a split row is used when its top probability reaches this
    pseudo_soft: bool = False    # train on the probability vector instead of its argmax (classify head)
    pseudo_fingerprint: str = None
    teacher: str = None          # RUN: distil from its probabilities (oof.csv; fold models under kit cv)
    kl_weight: float = 0.5       # W in (1 - W) * CE + W * T^2 * KL(teacher_T || student_T)
    temperature: float = 2.0     # T
    teacher_fingerprint: str = None
    deadline: float = None       # kit train --time-budget: the monotonic time the loop stops at, a usable model
                                 # saved (never part of a run's key: it says when, not what, is learned)


EMBEDDED_LLM = "smollm2"


EMBEDDED_ENCODER = "minilm"


TFIDF = "tfidf"


HEADS = ("classify", "generate")


FROZEN_STATES = ("fp16", "fp32", "int8")   # how the frozen lower blocks' states are computed and kept


@dataclass
class ModelArgs:
    model: str = EMBEDDED_LLM
    head: str = "classify"
    lora_r: int = 16          # 0: full fine-tune
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list = None   # None: every linear layer inside the transformer blocks
    lora_layers: object = "auto"   # N > 0: LoRA on the top N blocks only (the lower ones are computed
                                   # once); 0: every block; auto: 4 on a CPU, 0 on a GPU (kit/engine/device.py)
    precision: str = "auto"        # bf16 | fp16 (autocast + gradient scaler) | fp32 | auto
    gradient_checkpointing: object = "auto"   # True | False | auto: on for > 1B parameters on a GPU
    attention: str = "auto"        # sdpa | eager | flash_attention_2 | auto
    quantize: str = None           # 4bit | 8bit: QLoRA through bitsandbytes
    predict_batch_size: int = 32
    prefix_cache: bool = True
    device: str = "auto"           # cuda | cpu | auto: cuda when torch sees one
    frozen_states: str = "fp16"    # the frozen lower blocks' states (LoRA on the top blocks): fp16 (an fp32


# Settings that change how fast a model trains or predicts, never what it learns: not part of a
# run's key (eager and SDPA attention compute the same function).
RUNTIME_ARGS_MODEL = ("predict_batch_size", "prefix_cache", "attention", "device")


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


QUANTIZE = ("4bit", "8bit")


ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")
DEVICES = ("auto", "cuda", "cpu")
