"""A sampling engine: continuous batching over a fixed number of decode slots, with one prefill per prompt.

The engine holds a KV cache of static shape [layers, slots, max_len, kv_heads, head_dim] whose rows ("slots") each
hold one sample at its own length (a per-row cache index). A request is a prompt and n samples: its prompt is
prefilled once (with the other prompts that enter slots at the same time, right-padded to a bucketed width) and
that cache is copied into the slots of its samples;
each sample then decodes one token per engine step. Every `steps_per_sync` steps (4) the host collects the
finished samples and refills their slots at once with pending ones, so short samples do not wait for long ones.

Every shape is static (slots, max_len, the sync interval); prompt widths are bucketed and prefill batches have a
power-of-two number of rows, so the programs compiled are bounded (per width bucket, at most log2(slots) + 1 prefill
and insert shapes) and a warmed-up engine does not recompile. Sample j of a request draws its t-th token (t = 0 for
the token after the prompt) with fold_in(key_j, t), key_j being the sample's own raw PRNG key, so its random draws
do not depend on the slot count, the slot it ran in or its neighbours. Its logits do, up to float rounding: the
prefill batch's width and row count depend on which prompts enter slots together, and the decode batch is `slots`
rows wide (see "Reproducibility" in `rankjax.sampling`). So samples equal those of another slot count, and
`generate_tokens` with the same per-row keys, except where that rounding flips a token. Greedy requests
(temperature 0) need no key.

Sampling parameters are per request: temperature, top_p, top_k, stop ids and max_new_tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax.models import config as model_config
from rankjax.models.config import resolve_dtype
from rankjax.models.decoder import init_cache
from rankjax.models.sharding import BATCH_AXES
from rankjax.sampling.buckets import bucket_length
from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.finish import FINISH_LENGTH, FINISH_STOP

NO_STOP = -1  # padding of the per-slot stop-id table


@dataclasses.dataclass
class Request:
  """A prompt (token ids) and its samples: keys [n, 2] raw uint32 PRNG keys, one per sample (None only when
  sampling.temperature is 0, then `num_samples` greedy copies)."""

  prompt: list[int]
  sampling: SamplingConfig
  keys: np.ndarray | None = None
  num_samples: int = 1

  def __post_init__(self):
    if self.keys is not None:
      self.keys = np.asarray(self.keys, np.uint32).reshape(-1, 2)
      self.num_samples = len(self.keys)
    if self.sampling.temperature > 0 and self.keys is None:
      raise ValueError("Request: keys (one raw PRNG key per sample) are required when temperature > 0")
    if self.num_samples < 1:
      raise ValueError(f"Request: num_samples={self.num_samples} must be >= 1")
    if len(self.prompt) == 0:
      raise ValueError("Request: the prompt is empty")


@dataclasses.dataclass(frozen=True)
class Sample:
  """One generated sample: token ids (stop token excluded) and why it ended (FINISH_STOP / FINISH_LENGTH)."""

  tokens: list[int]
  finish: str


@dataclasses.dataclass
class EngineStats:
  """Counters of one `Engine.run`: decode steps, slot-steps that produced a token of a live sample, prefills."""

  steps: int = 0
  slot_steps: int = 0
  useful_slot_steps: int = 0
  prefills: int = 0
  generated_tokens: int = 0

  @property
  def useful_fraction(self) -> float:
    return self.useful_slot_steps / max(self.slot_steps, 1)


def _filtered(logits, top_p, top_k, k_max: int):
  """float32 logits [V] of one slot with tokens outside its top_k (0 = all), then outside its nucleus of mass
  top_p (under the top-k renormalised distribution), set to -inf; as `static_batch.filter_logits` with per-slot
  parameters. `k_max` (static) bounds every slot's top_k (V when some slot has none)."""
  desc = jax.lax.top_k(logits, k_max)[0]
  k_eff = jnp.where(top_k > 0, jnp.minimum(top_k, k_max), k_max)
  ranks = jnp.arange(k_max)
  probs = jax.nn.softmax(jnp.where(ranks < k_eff, desc, -jnp.inf))
  mass_before = jnp.cumsum(probs) - probs
  n_keep = jnp.where(top_p >= 1.0, k_eff, jnp.sum((mass_before < top_p) & (ranks < k_eff)))
  threshold = desc[jnp.maximum(n_keep, 1) - 1]
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def _pick(logits, key, step, temperature, top_p, top_k, k_max: int):
  """The token of one slot from logits [V]: argmax at temperature 0, else drawn with fold_in(key, step).

  `k_max` (static): 0 when every request is greedy, -1 when no sampled request filters (top_k 0 and top_p 1: no
  sort of the vocabulary), else the bound of `_filtered`.
  """
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits).astype(jnp.int32)
  if k_max == 0:
    return greedy
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
  if k_max > 0:
    filters = (top_k > 0) | (top_p < 1.0)
    scaled = jnp.where(filters, _filtered(scaled, top_p, top_k, k_max), scaled)
  drawn = jax.random.categorical(jax.random.fold_in(key, step), scaled).astype(jnp.int32)
  return jnp.where(temperature > 0, drawn, greedy)


def filtering_bound(requests, vocab: int) -> int:
  """The static filtering bound `k_max` of a run of `requests` (see `_pick`): 0 all greedy, -1 no filtering, else the
  number of largest logits kept before sampling."""
  sampled = [r.sampling for r in requests if r.sampling.temperature > 0]
  if not sampled:
    return 0
  filtering = [sp for sp in sampled if sp.top_k > 0 or sp.top_p < 1.0]
  if not filtering:
    return -1
  if any(sp.top_k == 0 for sp in filtering):  # a nucleus over the whole vocabulary needs it sorted
    return vocab
  return min(max(sp.top_k for sp in filtering), vocab)


class Engine:
  """Continuous-batching sampler of `model` with `params` over `slots` decode slots.

  `max_len` bounds prompt width (bucketed) + max_new_tokens of any request. `mesh`: slots are split over its batch
  axes ("data", "fsdp"), params are used as placed; every process must call `run` with the same requests.
  """

  def __init__(self, model, params, slots: int, max_len: int, mesh: Mesh | None = None, steps_per_sync: int = 4,
               pad_id: int = 0):
    if slots < 1 or max_len < 2 or steps_per_sync < 1:
      raise ValueError(f"Engine: slots={slots}, max_len={max_len}, steps_per_sync={steps_per_sync} must be >= 1, "
                       ">= 2, >= 1")
    self.model, self.params, self.slots, self.max_len = model, params, int(slots), int(max_len)
    self.steps_per_sync, self.pad_id, self.mesh = int(steps_per_sync), int(pad_id), mesh
    self.vocab = int(model.config.vocab_size)
    if mesh is not None:
      ways = int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))
      self._axes = BATCH_AXES if self.slots % ways == 0 else None
      self._replicate = jax.jit(lambda y: y, out_shardings=NamedSharding(mesh, P()))  # one compile per shape
    self.stats = EngineStats()

  def _key(self):
    return (self.model, self.slots, self.max_len, self.steps_per_sync)

  def __hash__(self):  # the jitted methods' cache is shared by engines of the same shape
    return hash(self._key())

  def __eq__(self, other):
    return isinstance(other, Engine) and self._key() == other._key()

  # ---- device state -------------------------------------------------------------------------------------------

  def _sharding(self, ndim: int, slot_axis: int = 0):
    if self.mesh is None:
      return None
    spec = [None] * ndim
    spec[slot_axis] = self._axes
    return NamedSharding(self.mesh, P(*spec))

  def _empty_state(self, max_new: int, max_stops: int) -> dict:
    s = self.slots
    cache = init_cache(self.model.config, s, self.max_len, resolve_dtype(self.model.config.dtype), per_row_index=True)
    return {
        "cache": cache,
        "token": jnp.zeros((s,), jnp.int32),  # the last token of each slot (fed at the next step)
        "step": jnp.zeros((s,), jnp.int32),  # tokens drawn so far by the slot's sample
        "length": jnp.zeros((s,), jnp.int32),  # tokens recorded (stop id excluded)
        "active": jnp.zeros((s,), bool),
        "finish_stop": jnp.zeros((s,), bool),
        "out": jnp.zeros((s, max_new), jnp.int32),
        "key": jnp.zeros((s, 2), jnp.uint32),
        "temperature": jnp.zeros((s,), jnp.float32),
        "top_p": jnp.ones((s,), jnp.float32),
        "top_k": jnp.zeros((s,), jnp.int32),
        "max_new": jnp.ones((s,), jnp.int32),
        "stop_ids": jnp.full((s, max_stops), NO_STOP, jnp.int32),
        "useful": jnp.zeros((), jnp.int32),
    }

  def state_shardings(self, state: dict) -> dict:
    """The NamedSharding of each entry of a decode state (the KV cache [layers, slots, ...] and per-slot arrays split
    over the slots' axes, scalars replicated); needs a mesh."""
    def place(x, axis=0):
      return NamedSharding(self.mesh, P()) if x.ndim == 0 else self._sharding(x.ndim, axis)
    out = {k: place(v) for k, v in state.items() if k != "cache"}
    out["cache"] = {k: place(v, 1 if k in ("k", "v") else 0) for k, v in state["cache"].items()}
    return out

  def abstract_state(self, max_new: int, max_stops: int) -> dict:
    """The decode state `run` makes, as `jax.ShapeDtypeStruct`s with their shardings (for compiling ahead, e.g.
    `rankjax.plan`); needs a mesh."""
    shapes = jax.eval_shape(lambda: self._empty_state(max_new, max_stops))
    return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes,
                        self.state_shardings(shapes))

  def _init_state(self, max_new: int, max_stops: int):
    state = self._empty_state(max_new, max_stops)
    if self.mesh is None:
      return state
    return jax.tree.map(jax.device_put, state, self.state_shardings(state))

  @functools.partial(jax.jit, static_argnums=(0,))
  def _prefill(self, params, ids, lengths):
    """(cache of the prompts [layers, R, W, ...], logits at each prompt's last real token [R, V]) of right-padded
    ids [R, W] with `lengths` [R] (>= 1)."""
    r, w = ids.shape
    segments = (jnp.arange(w)[None] < lengths[:, None]).astype(jnp.int32)
    cache = init_cache(self.model.config, r, w, resolve_dtype(self.model.config.dtype))
    (hidden, kernel), cache = self.model.apply(
        {"params": params}, ids, positions=jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32), (r, w)),
        segment_ids=segments, cache=cache, return_hidden=True)
    last = hidden[jnp.arange(r), lengths - 1]
    return cache, (last @ kernel.astype(last.dtype)).astype(jnp.float32)

  @functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2,))
  def _insert(self, k_max, state, slot_ids, src, prompt_cache, logits, length, keys, temperature, top_p, top_k,
              max_new, stop_ids):
    """Puts row src[i] of a prefill batch (`prompt_cache`, `logits` [R, V]) into slot slot_ids[i] (entries equal
    to the slot count are padding, dropped) and draws each new sample's first token with its key. Every other
    argument is per entry ([slots] or [slots, ...])."""
    w = prompt_cache["k"].shape[2]
    n = slot_ids.shape[0]
    cache = dict(state["cache"])
    for name in ("k", "v"):
      cache[name] = cache[name].at[:, slot_ids, :w].set(prompt_cache[name][:, src], mode="drop")
    segs = jnp.zeros((n, self.max_len), jnp.int32).at[:, :w].set(prompt_cache["segment_ids"][src])
    cache["segment_ids"] = cache["segment_ids"].at[slot_ids].set(segs, mode="drop")
    cache["index"] = cache["index"].at[slot_ids].set(length, mode="drop")
    first = jax.vmap(lambda lg, key, t, p, k: _pick(lg, key, 0, t, p, k, k_max))(
        logits[src], keys, temperature, top_p, top_k)
    hit = jnp.any(first[:, None] == stop_ids, axis=1)
    upd = lambda x, v: x.at[slot_ids].set(v, mode="drop")  # noqa: E731
    out_row = jnp.zeros((n, state["out"].shape[1]), jnp.int32).at[:, 0].set(jnp.where(hit, 0, first))
    new = dict(state, cache=cache)
    new["token"] = upd(state["token"], first)
    new["step"] = upd(state["step"], jnp.ones((n,), jnp.int32))
    new["length"] = upd(state["length"], jnp.where(hit, 0, 1))
    new["active"] = upd(state["active"], ~hit & (max_new > 1))
    new["finish_stop"] = upd(state["finish_stop"], hit)
    new["out"] = upd(state["out"], out_row)
    new["key"] = upd(state["key"], keys)
    for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("max_new", max_new),
                        ("stop_ids", stop_ids)):
      new[name] = upd(state[name], value)
    return new

  @functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
  def _decode(self, k_max, params, state):
    """`steps_per_sync` decode steps of every slot; finished and empty slots compute but record nothing."""
    s = self.slots
    pick = jax.vmap(lambda lg, key, step, t, p, k: _pick(lg, key, step, t, p, k, k_max))

    def one(state, _):
      cache = state["cache"]
      index = cache["index"]
      logits, cache = self.model.apply({"params": params}, state["token"][:, None], positions=index[:, None],
                                       segment_ids=jnp.ones((s, 1), jnp.int32), cache=cache)
      active = state["active"]
      cache["index"] = jnp.where(active, index + 1, index)
      token = pick(logits[:, -1], state["key"], state["step"], state["temperature"], state["top_p"], state["top_k"])
      hit = jnp.any(token[:, None] == state["stop_ids"], axis=1)
      write = active & ~hit
      rows = jnp.arange(s)
      at = jnp.minimum(state["length"], state["out"].shape[1] - 1)
      out = state["out"].at[rows, at].set(jnp.where(write, token, state["out"][rows, at]))
      length = state["length"] + write.astype(jnp.int32)
      new = dict(state, cache=cache, out=out, length=length)
      new["token"] = jnp.where(active, token, state["token"])
      new["step"] = state["step"] + active.astype(jnp.int32)
      new["finish_stop"] = state["finish_stop"] | (active & hit)
      new["active"] = write & (length < state["max_new"])
      new["useful"] = state["useful"] + jnp.sum(active.astype(jnp.int32))
      return new, None

    state, _ = jax.lax.scan(one, state, None, length=self.steps_per_sync)
    return state

  # ---- host loop ----------------------------------------------------------------------------------------------

  def _fetch(self, x) -> np.ndarray:
    if self.mesh is None or jax.process_count() == 1:
      return np.asarray(jax.device_get(x))
    return np.asarray(self._replicate(x).addressable_data(0))

  def _check(self, requests: list[Request]) -> None:
    for i, r in enumerate(requests):
      if min(r.prompt) < 0 or max(r.prompt) >= self.vocab:
        raise ValueError(f"Engine: requests[{i}] has token ids outside [0, vocab_size={self.vocab})")
      need = bucket_length(len(r.prompt)) + r.sampling.max_new_tokens
      if need > self.max_len:
        raise ValueError(f"Engine: requests[{i}] needs {need} cache slots (prompt width {bucket_length(len(r.prompt))}"
                         f" + max_new_tokens {r.sampling.max_new_tokens}) but max_len is {self.max_len}")

  def run(self, requests: list[Request], on_sample=None) -> list[list[Sample]]:
    """Returns, for each request, its samples in order. `self.stats` counts the run's steps and slot use.

    `on_sample(i, j, sample)`, if given, is called as soon as sample j of request i is finished (in finishing
    order), e.g. to grade and write samples while the engine goes on.
    """
    if not requests:
      return []
    self._check(requests)
    max_new = max(r.sampling.max_new_tokens for r in requests)
    max_stops = max([len(r.sampling.stop_ids) for r in requests] + [1])
    k_max = filtering_bound(requests, self.vocab)
    state = self._init_state(max_new, max_stops)
    self.stats = EngineStats()
    results = [[None] * r.num_samples for r in requests]
    queue = collections.deque((i, j) for i, r in enumerate(requests) for j in range(r.num_samples))
    owner = [None] * self.slots  # (request, sample) in each slot
    prefilled = {}  # request -> (prefill batch, row), dropped once all its samples are placed
    placed = collections.Counter()
    while queue or any(o is not None for o in owner):
      free = [s for s in range(self.slots) if owner[s] is None]
      round_ = []  # (slot, (request, sample)) placed now
      while free and queue:
        slot, item = free.pop(0), queue.popleft()
        round_.append((slot, item))
        owner[slot] = item
      if round_:
        state = self._refill(state, k_max, requests, round_, prefilled, max_stops)
        for _, (i, _) in round_:
          placed[i] += 1
          if placed[i] == requests[i].num_samples:
            prefilled.pop(i, None)
      state = self._decode(k_max, self.params, state)
      self.stats.steps += self.steps_per_sync
      self.stats.slot_steps += self.steps_per_sync * self.slots
      active, length, stop, out = (self._fetch(state[k]) for k in ("active", "length", "finish_stop", "out"))
      for s in range(self.slots):
        if owner[s] is not None and not active[s]:
          i, j = owner[s]
          results[i][j] = Sample(out[s, :length[s]].tolist(), FINISH_STOP if stop[s] else FINISH_LENGTH)
          self.stats.generated_tokens += int(length[s])
          owner[s] = None
          if on_sample is not None:
            on_sample(i, j, results[i][j])
    # Decode slot-steps that drew a token of a live sample (first tokens are drawn at insertion, from the prefill).
    self.stats.useful_slot_steps = int(self._fetch(state["useful"]))
    return results

  def _refill(self, state, k_max, requests, round_, prefilled, max_stops):
    """Places the samples of `round_` [(slot, (request, sample))]: the prompts not yet prefilled are prefilled
    together (one batch, rows a power of two, the widest prompt's bucketed width), then one insert per prefill
    batch the samples come from (a prompt whose samples did not all fit stays prefilled for the next round)."""
    new = list(dict.fromkeys(i for _, (i, _) in round_ if i not in prefilled))
    if new:
      rows = 1 << (len(new) - 1).bit_length()
      width = bucket_length(max(len(requests[i].prompt) for i in new))
      ids = np.full((rows, width), self.pad_id, np.int32)
      lengths = np.ones((rows,), np.int32)
      for r, i in enumerate(new):
        ids[r, :len(requests[i].prompt)] = requests[i].prompt
        lengths[r] = len(requests[i].prompt)
      batch = self._prefill(self.params, jnp.asarray(ids), jnp.asarray(lengths))
      self.stats.prefills += len(new)
      for r, i in enumerate(new):
        prefilled[i] = (batch, r)
    by_batch = collections.defaultdict(list)
    for slot, (i, j) in round_:
      by_batch[id(prefilled[i][0])].append((slot, i, j))
    for entries in by_batch.values():
      (cache, logits), _ = prefilled[entries[0][1]]
      n = self.slots
      slot_ids = np.full((n,), n, np.int32)
      src = np.zeros((n,), np.int32)
      length = np.zeros((n,), np.int32)
      keys = np.zeros((n, 2), np.uint32)
      temperature, top_p = np.zeros((n,), np.float32), np.ones((n,), np.float32)
      top_k, max_new = np.zeros((n,), np.int32), np.ones((n,), np.int32)
      stops = np.full((n, max_stops), NO_STOP, np.int32)
      for e, (slot, i, j) in enumerate(entries):
        r, sp = requests[i], requests[i].sampling
        slot_ids[e], src[e], length[e] = slot, prefilled[i][1], len(r.prompt)
        if r.keys is not None:
          keys[e] = r.keys[j]
        temperature[e], top_p[e], top_k[e], max_new[e] = sp.temperature, sp.top_p, sp.top_k, sp.max_new_tokens
        stops[e, :len(sp.stop_ids)] = sp.stop_ids
      state = self._insert(k_max, state, *map(jnp.asarray, (slot_ids, src)), cache, logits,
                           *map(jnp.asarray, (length, keys, temperature, top_p, top_k, max_new, stops)))
    return state


def kv_cache_bytes(config, slots: int, max_len: int, dtype=None) -> int:
  """Bytes of the engine's KV cache for a model config: keys and values of every layer, slot and position
  (2 * layers * slots * max_len * kv_heads * head_dim * itemsize), plus the int32 segment ids; `dtype` defaults to
  the model's compute dtype (the cache's)."""
  itemsize = np.dtype(resolve_dtype(dtype or config.dtype)).itemsize
  kv = 2 * config.num_layers * slots * max_len * config.num_kv_heads * model_config.head_dim(config) * itemsize
  return int(kv + 4 * slots * max_len)


def engine_for(model, params, requests: list[Request], slots: int, mesh: Mesh | None = None,
               steps_per_sync: int = 4, pad_id: int = 0) -> Engine:
  """An Engine whose max_len fits `requests` (the widest bucketed prompt + the largest max_new_tokens)."""
  max_len = max(bucket_length(len(r.prompt)) + r.sampling.max_new_tokens for r in requests)
  return Engine(model, params, slots, max_len, mesh, steps_per_sync, pad_id)
