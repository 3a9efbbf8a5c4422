"""Hypernetwork-Based Augmentation (HBA; Chen and Chang, "Hypernetwork-Based Augmentation",
arXiv 2006.06320).

One classifier whose chosen layers are hyper-layers conditioned on augmentation
hyper-parameters h (`jaxaug.models.hyper`, Self-Tuning Networks' form) stands for a
population of models, each trained with its own PBA-style policy; the policy's
hyper-parameters lambda descend the validation loss. Each train step:

1. every training image gets its own h = lambda + sigma * eps (eps ~ N(0, I), redrawn
   every step) and is augmented with PBA's augmentation function at the probabilities
   and magnitudes h stands for, then by the fixed `config.augment` (e.g. crop + flip);
2. the classifier, its hyper-layers fed the per-example h, takes one step of the
   classifier optimiser on the training loss;
3. every `update_every` steps after `warmup_epochs`, lambda takes one step of its own
   optimiser on the loss of the updated classifier on the un-augmented validation batch
   at h = lambda; the gradient reaches lambda through the hyper-layers only.

The search space is PBA's (`policies.PBA_ENTRIES`: 15 ops, each twice): a probability
per entry and a magnitude per entry whose op has one (AutoContrast, Equalize and Invert
have none, so 30 + 24 = 54 hyper-parameters; the paper counts PBA's 60, whose 6 extra
values no op reads). Each is stored unbounded, the logit of its position in its range
(`space.to_unbounded`; probabilities in [0, 1], magnitudes in HBA's table-7 ranges).
lambda at the end of each epoch is kept in the state and exported as the learned
schedule (`export_policy`), replayable with `learned('<workdir>/policy')`: a replay uses
in its r-th part of training what the search had learned by the end of its epoch r.

The validation loss that lambda descends is taken in training mode (batch norm normalises
with the validation batch's own statistics, which are not kept), as `bilevel` does; the
reported validation metrics use the running statistics.

config.hba: strategy (which layers become hyper-layers), sigma, update_every,
warmup_epochs, init_probability, init_strength, optim (lambda's optimiser).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from flax import struct

from jaxaug.augment import learned
from jaxaug.augment import policies
from jaxaug.augment import space
from jaxaug.methods import augmentation
from jaxaug.methods import contract
from jaxaug.methods import training
from jaxaug.models import hyper


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """The PBA entries and how the hyper-parameter vector [D] maps to their values.

  The first K values are the entries' probabilities, the next ones the magnitudes of the
  entries in `ranged` (in that order), each the logit of its position in `[low, high]`.
  """
  names: tuple[str, ...]
  ranged: tuple[int, ...]
  low: tuple[float, ...]
  high: tuple[float, ...]

  @classmethod
  def create(cls, names: tuple[str, ...] = policies.PBA_ENTRIES) -> "SearchSpace":
    """The space of `names` (`space.SPACE` names; ops without a magnitude get none)."""
    entries = [space.SPACE.get(name) for name in names]
    ranged = tuple(i for i, entry in enumerate(entries) if entry.magnitude_range is not None)
    return cls(tuple(names), ranged, tuple(entries[i].magnitude_range[0] for i in ranged),
               tuple(entries[i].magnitude_range[1] for i in ranged))

  @property
  def dim(self) -> int:
    """D, the number of hyper-parameters."""
    return len(self.names) + len(self.ranged)

  def labels(self) -> tuple[str, ...]:
    """The entries as 'Name#copy' (PBA holds each op twice)."""
    seen: dict[str, int] = {}
    labels = []
    for name in self.names:
      seen[name] = seen.get(name, 0) + 1
      labels.append(f"{name}#{seen[name]}")
    return tuple(labels)

  def values(self, unbounded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(probability [..., K], magnitude [..., K]) in real units from unbounded [..., D].

    Entries without a magnitude get 1 (their op's full strength, as PBA runs them).
    """
    count = len(self.names)
    probability = jax.nn.sigmoid(unbounded[..., :count])
    ranged = space.from_unbounded(unbounded[..., count:], jnp.asarray(self.low),
                                  jnp.asarray(self.high))
    magnitude = jnp.ones(unbounded.shape[:-1] + (count,), ranged.dtype)
    return probability, magnitude.at[..., jnp.asarray(self.ranged, jnp.int32)].set(ranged)

  def positions(self, unbounded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(probability [..., K], position of each ranged magnitude in its range [..., R]) in [0, 1]."""
    return jax.nn.sigmoid(unbounded[..., :len(self.names)]), jax.nn.sigmoid(
        unbounded[..., len(self.names):])

  def initial(self, probability: float, strength: float) -> np.ndarray:
    """Unbounded lambda [D] at `probability` for every entry, and every magnitude moved by
    `strength` (a fraction of its range) from the end nearest its op's identity
    (e.g. posterize 8 - 0.8 bits, solarize threshold 255 - 25.5, rotate 3 degrees); a
    magnitude whose identity is mid-range (the enhance ops' factor 1) starts there."""
    positions = []
    for index, low, high in zip(self.ranged, self.low, self.high):
      identity = space.SPACE.get(self.names[index]).identity
      at_identity = min(max((identity - low) / (high - low), 0.0), 1.0)
      direction = 0.0 if abs(at_identity - 0.5) < 1e-6 else (1.0 if at_identity < 0.5 else -1.0)
      positions.append(at_identity + direction * strength)
    positions = np.clip(np.asarray(positions, np.float64), 1e-4, 1 - 1e-4)
    values = np.concatenate([np.full(len(self.names), probability), positions])
    return np.log(values / (1 - values)).astype(np.float32)


@struct.dataclass
class Settings:
  """Static HBA settings (hashable)."""
  search_space: SearchSpace = struct.field(pytree_node=False)
  sigma: float = struct.field(pytree_node=False)
  update_every: int = struct.field(pytree_node=False)
  warmup_steps: int = struct.field(pytree_node=False)
  steps_per_epoch: int = struct.field(pytree_node=False)
  strategy: str = struct.field(pytree_node=False)


@struct.dataclass
class State:
  step: jax.Array
  classifier: training.Learner       # the model with its hyper-layers (called with `hyper=`)
  hyper: training.Learner            # lambda, unbounded [D], and its optimiser state
  schedule: jax.Array              # f32 [epochs, D]: lambda at the end of each epoch
  nonfinite_step: jax.Array        # first step with a non-finite loss or hypergradient, -1 if none
  settings: training.Settings = struct.field(pytree_node=False)
  hba: Settings = struct.field(pytree_node=False)


def default_config() -> ml_collections.ConfigDict:
  """`config.hba`. Where the paper's extracted text lost a value, Self-Tuning Networks'
  published defaults (MacKay et al. 2019) are used, as the paper says it follows STN."""
  return ml_collections.ConfigDict({
      # which layers become hyper-layers: conv+bn | conv | bn | first_conv | first_bn
      # (the paper's best and default: first_bn)
      "strategy": "first_bn",
      "sigma": 0.5,             # perturbation scale of h around lambda, unbounded units (STN)
      "update_every": 2,        # a lambda step every K train steps (STN: 2 weight steps per hyper step)
      "warmup_epochs": 5.0,     # lambda held fixed at first (STN); not optim.warmup_epochs,
                                # which ramps lambda's learning rate once it moves
      # initial values (the paper's initialisation formula was lost in the text): every
      # probability, and every magnitude's distance from its op's identity (fraction of its range)
      "init_probability": 0.1,
      "init_strength": 0.1,
      # lambda's optimiser: Adam 3e-3, constant (STN; the paper: Adam, constant)
      "optim": training.adam_optimizer(3e-3),
  })


def uses_val_batch(config: ml_collections.ConfigDict) -> bool:
  """Yes: lambda learns from the validation loss."""
  del config
  return True


def _check_config(cfg: ml_collections.ConfigDict) -> None:
  """ValueError naming the first out-of-range value of `config.hba`."""
  if cfg.strategy not in hyper.STRATEGIES:
    raise ValueError(f"unknown config.hba.strategy {cfg.strategy!r}; valid: "
                     f"{', '.join(hyper.STRATEGIES)}")
  training.check_integer("config.hba.update_every", cfg.update_every)
  for name in ("sigma", "warmup_epochs"):
    if not cfg[name] >= 0:
      raise ValueError(f"config.hba.{name}={cfg[name]!r} must be >= 0")
  for name in ("init_probability", "init_strength"):
    if not 0 < cfg[name] < 1:
      raise ValueError(f"config.hba.{name}={cfg[name]!r} must lie in (0, 1)")


def init(config: ml_collections.ConfigDict, rng: jax.Array, info: training.DataInfo) -> State:
  """The classifier with hyper-layers (`config.hba.strategy`), lambda and their optimisers."""
  cfg = config.hba
  _check_config(cfg)
  search_space = SearchSpace.create()
  classifier_rng, hyper_rng = jax.random.split(rng)

  def with_hyper_layers(model):
    return hyper.make_hyper_model(model, cfg.strategy, hyper_dim=search_space.dim,
                                  image_shape=info.image_shape,
                                  rngs=nnx.Rngs(params=hyper_rng))

  classifier = training.create_classifier(config, classifier_rng, info, wrap=with_hyper_layers)
  lam = jnp.asarray(search_space.initial(cfg.init_probability, cfg.init_strength))
  warmup_steps = min(int(round(cfg.warmup_epochs * info.steps_per_epoch)), info.total_steps)
  updates_per_epoch, updates = info.updates_every(cfg.update_every, from_step=warmup_steps)
  tx = training.make_optimizer(cfg.optim, steps_per_epoch=updates_per_epoch, total_steps=updates)
  return State(
      step=jnp.zeros((), jnp.int32),
      classifier=classifier,
      hyper=training.Learner.of_params(lam, tx),
      schedule=jnp.tile(lam, (info.num_epoch_slots, 1)),
      nonfinite_step=jnp.full((), -1, jnp.int32),
      settings=training.Settings.from_config(config, info),
      hba=Settings(search_space=search_space, sigma=float(cfg.sigma),
                   update_every=cfg.update_every,
                   warmup_steps=warmup_steps,
                   steps_per_epoch=info.steps_per_epoch, strategy=cfg.strategy))


def _policy_augment(state: State, rng: jax.Array, images: jax.Array,
                    hyper_values: jax.Array) -> jax.Array:
  """PBA's augmentation of f32 [B, H, W, C] at unbounded h [D] or per image [B, D]."""
  probability, magnitude = state.hba.search_space.values(hyper_values)
  return policies.pba_augment(rng, images, probability, magnitude,
                              names=state.hba.search_space.names)


def _broadcast(lam: jax.Array, batch: int) -> jax.Array:
  """lambda [D] as every example's h, [batch, D]."""
  return jnp.broadcast_to(lam, (batch,) + lam.shape)


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array):
  """One classifier update at perturbed h, then (every K steps after warm-up) a lambda update.

  train_batch: image f32 [1, B, H, W, C] in [0, 1], label int [1, B].
  val_batch: image f32 [B', H, W, C], label [B'], not augmented.
  """
  policy_rng, fixed_rng, noise_rng = jax.random.split(rng, 3)
  lam = state.hyper.params
  images = train_batch["image"][0]
  batch = images.shape[0]
  h = lam + state.hba.sigma * jax.random.normal(noise_rng, (batch, lam.shape[0]), lam.dtype)
  augmented = _policy_augment(state, policy_rng, images, h)
  augmented = augmentation.fixed_augment_stack(state.settings, fixed_rng, augmented[None],
                                               state.step)
  classifier, aux = training.classifier_updates(
      state.classifier, state.settings, augmented, train_batch["label"],
      model_kwargs={"hyper": h[None]})

  def val_loss(lam):
    loss, _ = training.classifier_loss(
        classifier, classifier.params, classifier.rest, val_batch["image"], val_batch["label"],
        mean=state.settings.mean, std=state.settings.std,
        hyper=_broadcast(lam, val_batch["image"].shape[0]))
    return loss

  def with_update(hyper_learner):
    loss, grads = jax.value_and_grad(val_loss)(hyper_learner.params)
    return hyper_learner.apply_update(grads), loss, optax.tree.norm(grads)

  def without_update(hyper_learner):
    zero = jnp.zeros((), hyper_learner.params.dtype)
    return hyper_learner, zero, zero

  updates = ((state.step % state.hba.update_every == 0)
             & (state.step >= state.hba.warmup_steps))
  hyper_learner, loss_at_lambda, grad_norm = jax.lax.cond(updates, with_update, without_update,
                                                          state.hyper)
  schedule = training.record_epoch(state.schedule, state.step, state.hba.steps_per_epoch,
                                 hyper_learner.params)

  metrics = jax.tree.map(jnp.mean, aux.metrics)
  metrics.update(val_loss=contract.Sparse(loss_at_lambda, updates),
                 hypergrad_norm=contract.Sparse(grad_norm, updates))
  nonfinite = training.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"],
                                     loss_at_lambda, grad_norm, hyper_learner.params)
  return state.replace(step=state.step + 1, classifier=classifier, hyper=hyper_learner,
                       schedule=schedule, nonfinite_step=nonfinite), metrics


def eval_step(state: State, batch: dict) -> dict:
  """Loss/accuracy sums of the classifier at h = lambda on a masked batch."""
  return training.eval_metrics(state.classifier, batch, mean=state.settings.mean,
                             std=state.settings.std,
                             hyper=_broadcast(state.hyper.params, batch["image"].shape[0]))


def augment(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """What training sees at h = lambda: the policy, then `config.augment`, f32 [B, H, W, C]."""
  policy_rng, fixed_rng = jax.random.split(rng)
  augmented = _policy_augment(state, policy_rng, images, state.hyper.params)
  return augmentation.fixed_augment_stack(state.settings, fixed_rng, augmented[None], state.step)[0]


def summaries(state: State) -> contract.Summaries:
  """Each entry's probability, and each magnitude's position in its range, at lambda."""
  search_space = state.hba.search_space
  probability, position = search_space.positions(state.hyper.params)
  labels = search_space.labels()
  return contract.Summaries(
      scalars={"hba/mean_probability": probability.mean(),
               "hba/mean_magnitude_position": position.mean()},
      vectors={"hba/probability": probability, "hba/magnitude_position": position},
      labels=(("hba/probability", labels),
              ("hba/magnitude_position", tuple(labels[i] for i in search_space.ranged))))


def export_policy(state: State) -> learned.Policy:
  """The schedule of lambda (its value at the end of each epoch) in real units, replayable
  as family 'hba'."""
  search_space = state.hba.search_space
  probability, magnitude = jax.device_get(search_space.values(state.schedule))
  final_probability, final_magnitude = jax.device_get(search_space.values(state.hyper.params))
  units = {name: space.SPACE.get(name).unit for name in dict.fromkeys(search_space.names)}
  return learned.Policy(
      family="hba",
      settings={"names": list(search_space.names)},
      summary={"what": "PBA augmentation-function schedule (one row per epoch of the search, "
                       "the values at its end): per entry, the probability of applying it "
                       "and its magnitude",
               "strategy": state.hba.strategy,
               "count_probabilities": list(policies.PBA_COUNT_PROBABILITIES),
               "units": units,
               "final": {label: {"probability": float(p), "magnitude": float(m)}
                         for label, p, m in zip(search_space.labels(), final_probability,
                                                final_magnitude)}},
      arrays={"probability": np.asarray(probability, np.float32),
              "magnitude": np.asarray(magnitude, np.float32)})


def replay_policy(policy: learned.Policy) -> learned.ProgressSampler:
  """`export_policy`'s schedule replayed (`learned('<dir>')`): arrays probability and
  magnitude [R, K], settings names [K]; PBA's augmentation function at row r."""
  names = tuple(policy.settings["names"])  # PBA holds each op twice
  for name in names:
    space.SPACE.get(name)  # unknown names: ValueError listing the valid ones
  probability = np.asarray(policy.arrays["probability"], np.float32)
  magnitude = np.asarray(policy.arrays["magnitude"], np.float32)
  if probability.shape != magnitude.shape or probability.shape[1:] != (len(names),):
    raise ValueError(f"hba policy: probability {probability.shape} and magnitude "
                     f"{magnitude.shape} must both be [rows, {len(names)}]")

  def sample(rng: jax.Array, images: jax.Array, progress: jax.Array) -> jax.Array:
    row = learned.schedule_row(probability.shape[0], progress)
    return policies.pba_augment(rng, images, jnp.asarray(probability)[row],
                                jnp.asarray(magnitude)[row], names=names)

  return sample


def bench_variants(config: ml_collections.ConfigDict) -> list[contract.BenchVariant]:
  """Its two kinds of step: with a lambda update (every `update_every` = 2 steps after the
  warm-up) and without."""
  del config
  return [contract.BenchVariant("hba_without_lambda_update", {"hba.warmup_epochs": 1e9}),
          contract.BenchVariant("hba_with_lambda_update",
                                {"hba.update_every": 1, "hba.warmup_epochs": 0.0},
                                amortise=("hba_without_lambda_update", 2))]
