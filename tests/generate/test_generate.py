"""The KV-cache sampler: greedy tokens and log-probs equal transformers' `generate` for every family, sampling
follows the truncated distribution, eos and early stop, shapes at the edges, meshes equal one device, `Sampler`.

Near-ties: random models have near-equal top logits, where fp32 rounding may pick either token. The gain of the
final norm is scaled up (×40, ×10 under Gemma-2's final soft-cap of 10) so logit gaps are wide, and the comparison
also reads transformers' own logits: tokens and log-probs are compared at the steps before the first one whose
top-2 gap is under MIN_GAP (asserted to be every step at these seeds, so a flip cannot hide).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import random_hf_model

from mlc_jax.data.tokenizer import EOS_ID, byte_tokenizer
from mlc_jax.generate import decode, generate
from mlc_jax.generate.sampler import PromptTooLong, Sampler
from mlc_jax.generate.sampling import SamplingSettings, truncated_logits
from mlc_jax.models import get_preset, init_model, load_hf
from mlc_jax.parallel.mesh import make_mesh

N_NEW, WINDOW, MIN_GAP, LOGP_TOL = 10, 6, 1e-3, 1e-4
PROMPT_LENS = (11, 4, 8)  # prompt + generation (up to 21) > WINDOW
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
SMALL = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, max_position_embeddings=256)

HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SMALL, num_hidden_layers=2, rope_parameters=LLAMA3_ROPE,
                                              tie_word_embeddings=False),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL, num_hidden_layers=2, tie_word_embeddings=True,
                                              rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "qwen3": lambda: transformers.Qwen3Config(**SMALL, num_hidden_layers=2, tie_word_embeddings=False,
                                              rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "gemma2": lambda: transformers.Gemma2Config(**SMALL, num_hidden_layers=2, query_pre_attn_scalar=24,
                                                sliding_window=WINDOW, attn_logit_softcapping=1.0,
                                                final_logit_softcapping=10.0, tie_word_embeddings=True),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        **SMALL, num_hidden_layers=3, query_pre_attn_scalar=32, sliding_window=WINDOW, tie_word_embeddings=False,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}}),
}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
  """(our model, HF model, prompts, HF greedy tokens [3, n], HF log-softmax [3, n, v]) per family, built once."""
  cache = {}

  def get(name):
    if name not in cache:
      hf_model = random_hf_model(HF_CONFIGS[name]())
      gain = hf_model.model.norm.weight  # the final norm: wide logit gaps (Gemma's norms scale by 1 + w)
      scale = 10.0 if name == "gemma2" else 40.0
      with torch.no_grad():
        gain.copy_(scale * (1 + gain) - 1 if name.startswith("gemma") else scale * gain)
      hf_model.generation_config = transformers.GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0)
      path = tmp_path_factory.mktemp(name)
      hf_model.save_pretrained(path)
      rng = np.random.default_rng(0)
      prompts = [rng.integers(0, 97, n) for n in PROMPT_LENS]
      tokens, logps = zip(*(hf_greedy(hf_model, p, N_NEW) for p in prompts))
      cache[name] = load_hf(str(path)), prompts, np.stack(tokens), np.stack(logps)
    return cache[name]

  return get


def hf_greedy(hf_model, prompt, n):
  """transformers' greedy continuation of one unpadded prompt: tokens `[n]` and log-softmax `[n, v]` (float64)."""
  with torch.no_grad():
    out = hf_model.generate(torch.tensor(prompt[None]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            max_new_tokens=n, min_new_tokens=n, output_logits=True, return_dict_in_generate=True)
  logps = np.stack([torch.log_softmax(step[0].double(), -1).numpy() for step in out.logits])
  return out.sequences[0, len(prompt):].numpy(), logps


def padded(prompts, side, width=None):
  width = width or max(map(len, prompts))
  ids, mask = np.zeros((len(prompts), width), np.int32), np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    cols = slice(0, len(p)) if side == "right" else slice(width - len(p), width)
    ids[i, cols], mask[i, cols] = p, 1
  return ids, mask


def comparable_steps(ref_logps):
  """Per row, the number of leading steps whose top-2 log-prob gap is at least MIN_GAP."""
  top2 = -np.sort(-ref_logps, axis=-1)[..., :2]
  near_tie = (top2[..., 0] - top2[..., 1]) < MIN_GAP
  return np.where(near_tie.any(-1), near_tie.argmax(-1), near_tie.shape[-1])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_greedy_tokens_and_logps_equal_transformers(family, name, side):
  model, prompts, ref_tokens, ref_logps = family(name)
  if name.startswith("gemma"):
    assert model.cfg.sliding_window == WINDOW < min(PROMPT_LENS) + N_NEW and any(model.cfg.sliding_layers)
  assert model.cfg.tie_embeddings == (name in ("qwen2", "gemma2"))
  ids, mask = padded(prompts, side)
  out = generate(model, ids, mask, max_new_tokens=N_NEW)
  assert out.tokens.shape == (3, N_NEW) and out.tokens.dtype == jnp.int32 and out.logps.dtype == jnp.float32
  np.testing.assert_array_equal(out.lengths, N_NEW)
  steps = comparable_steps(ref_logps)
  assert (steps == N_NEW).all(), steps  # the scaled head leaves no near-tie at these seeds
  np.testing.assert_array_equal(out.tokens, ref_tokens)
  ref_token_logps = np.take_along_axis(ref_logps, ref_tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.logps, ref_token_logps, atol=LOGP_TOL, rtol=0)


def test_llama3_scaling_and_sliding_windows_are_exercised(family):
  """The same weights without llama3 scaling / without the window give other tokens: the tests above see them."""
  for name, change in (("llama", dict(rope_scaling=None)), ("gemma2", dict(sliding_window=64)),
                       ("gemma3_text", dict(sliding_window=64))):
    model, prompts, ref_tokens, _ = family(name)
    other = nnx.eval_shape(lambda: type(model)(model.cfg.replace(**change), rngs=nnx.Rngs(0)))
    nnx.update(other, nnx.state(model))
    ids, mask = padded(prompts, "left")
    logps = generate(other, ids, mask, max_new_tokens=N_NEW).logps
    ref = np.take_along_axis(family(name)[3], ref_tokens[..., None], -1)[..., 0]
    assert np.abs(np.asarray(logps) - ref).max() > 1e-3, name


def test_any_padding_layout_and_bucket_width_give_the_same_result(family):
  model, prompts, _, _ = family("gemma3_text")
  base = generate(model, *padded(prompts, "left"), max_new_tokens=N_NEW)
  holes_ids, holes_mask = padded(prompts, "right", width=30)
  holes_ids = np.insert(holes_ids, 2, 5, axis=1)  # a padding column inside every prompt
  holes_mask = np.insert(holes_mask, 2, 0, axis=1)
  for ids, mask, buckets in ((holes_ids, holes_mask, None), (*padded(prompts, "right"), (12, 40))):
    out = generate(model, ids, mask, max_new_tokens=N_NEW, buckets=buckets)
    np.testing.assert_array_equal(out.tokens, base.tokens)
    # float32 log-probs, summed in another order for another layout (1.14e-5 apart seen).
    np.testing.assert_allclose(out.logps, base.logps, atol=2e-5)


def test_sample_runs_inside_a_jitted_step_from_a_pure_parameter_dict(family):
  """As on-policy MSD will call it: graphdef + the pure dict of TrainState.params['model'], inside a jit."""
  model, prompts, ref_tokens, _ = family("qwen2")
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  ids, mask = padded(prompts, "left")

  @jax.jit
  def step(params, ids, mask):
    out, _ = decode.sample(graphdef, params, ids, mask, decode.row_keys(0, range(3)), SamplingSettings(N_NEW))
    return out.tokens, jnp.sum(out.logps)

  tokens, total = step(params, jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_array_equal(tokens, ref_tokens)
  assert np.isfinite(float(total))


# ---- sampling ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_vocab():
  """A tiny model over 16 tokens with spread-out next-token logits, and its next-token logits for one prompt."""
  model = init_model(get_preset("tiny", vocab_size=16, tie_embeddings=False), seed=3)
  prompt = np.array([[1, 5, 9, 2, 7]], np.int32)
  spread = float(np.std(model(jnp.asarray(prompt))[0, -1]))
  model.lm_head.set_value(model.lm_head[...] * (1.5 / spread))  # next-token logits with a std of 1.5
  return model, prompt, np.asarray(model(jnp.asarray(prompt))[0, -1], np.float64)


def reference_distribution(logits, temperature, top_k, top_p):
  """temperature → top-k → top-p on float64 NumPy logits, renormalised after each cut."""
  p = np.exp(logits / temperature - (logits / temperature).max())
  p /= p.sum()
  if top_k:
    p = np.where(p >= np.sort(p)[-top_k], p, 0.0)
    p /= p.sum()
  order = np.argsort(-p)
  before = np.cumsum(p[order]) - p[order]
  keep = np.zeros_like(p, bool)
  keep[order[before < top_p]] = True
  p = np.where(keep, p, 0.0)
  return p / p.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.5, 4, 1.0), (1.0, 0, 0.7),
                                                     (2.0, 6, 0.8)])
def test_sampled_frequencies_follow_the_truncated_distribution(small_vocab, temperature, top_k, top_p):
  """n = 4096 draws of the first token, one row each. For a multinomial the expected total variation is at most
  ½ Σ √(2 p(1−p) / (π n)) ≤ 0.024 over 16 tokens; the bound is 2.5× that, and cut tokens must never appear."""
  model, prompt, logits = small_vocab
  n = 4096
  expected = reference_distribution(logits, temperature, top_k, top_p)
  assert 2 <= (expected > 0).sum() < 16 or (top_k == 0 and top_p == 1)  # the cut is real and not trivial
  out = generate(model, np.repeat(prompt, n, 0), np.ones((n, prompt.shape[1]), np.int32), max_new_tokens=1,
                 temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
  freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=16) / n
  assert freq[expected == 0].sum() == 0
  assert 0.5 * np.abs(freq - expected).sum() < 0.06
  # logps are those of the untruncated, temperature-1 distribution
  np.testing.assert_allclose(out.logps[:, 0], (logits - np.log(np.exp(logits).sum()))[out.tokens[:, 0]], atol=1e-5)


def test_truncated_logits_matches_the_reference(small_vocab):
  _, _, logits = small_vocab
  for temperature, top_k, top_p in ((0.7, 3, 1.0), (1.0, 0, 0.5), (1.3, 8, 0.9)):
    kept = truncated_logits(jnp.asarray(logits, jnp.float32)[None], SamplingSettings(1, temperature, top_k, top_p))
    probs = np.asarray(jax.nn.softmax(kept[0]), np.float64)
    np.testing.assert_allclose(probs, reference_distribution(logits, temperature, top_k, top_p), atol=1e-5)


def test_top_k_1_is_greedy_and_a_seed_reproduces_its_samples(small_vocab):
  model, prompt, _ = small_vocab
  ids = np.repeat(prompt, 4, 0)
  mask = np.ones_like(ids)
  greedy = generate(model, ids, mask, max_new_tokens=6)
  np.testing.assert_array_equal(generate(model, ids, mask, max_new_tokens=6, temperature=1.0, top_k=1, seed=5).tokens,
                                greedy.tokens)
  first = generate(model, ids, mask, max_new_tokens=6, temperature=1.0, seed=5).tokens
  np.testing.assert_array_equal(generate(model, ids, mask, max_new_tokens=6, temperature=1.0, seed=5).tokens, first)
  assert (np.asarray(generate(model, ids, mask, max_new_tokens=6, temperature=1.0, seed=6).tokens) != first).any()
  assert len({tuple(row) for row in np.asarray(first)}) > 1  # rows draw with their own keys


# ---- eos, early stop, edges ----------------------------------------------------------------------------------

def test_eos_pads_the_rest_and_stops_early(family):
  model, prompts, ref_tokens, _ = family("qwen3")
  ids, mask = padded(prompts, "right")
  eos = int(ref_tokens[0, 2])  # row 0 emits it at step 2; its first occurrence in each row ends that row
  never = next(t for t in range(97) if t not in ref_tokens)
  out = generate(model, ids, mask, max_new_tokens=N_NEW, eos_ids=(never, eos), pad_id=-1)
  for row, ref in zip(range(3), ref_tokens):
    hits = np.flatnonzero(ref == eos)
    n = hits[0] + 1 if len(hits) else N_NEW
    assert out.lengths[row] == n
    np.testing.assert_array_equal(out.tokens[row, :n], ref[:n])
    assert (np.asarray(out.tokens[row, n:]) == -1).all() and (np.asarray(out.logps[row, n:]) == 0).all()
  assert out.lengths[0] == 3

  # Every row done after its first token: the loop runs no decode step (the cache holds only the prompt).
  first = generate(model, ids, mask, max_new_tokens=1).tokens[:, 0]
  settings = SamplingSettings(N_NEW, eos_ids=tuple(int(t) for t in first))
  prepared = decode.prepare(model)
  out, cache = decode.run(prepared, *decode.right_pad(ids, mask, 16, 0), decode.row_keys(0, range(3)), settings)
  np.testing.assert_array_equal(out.lengths, 1)
  assert int(cache.index) == 16


def test_one_new_token_a_batch_of_one_and_an_empty_row(family):
  model, prompts, ref_tokens, ref_logps = family("gemma2")
  out = generate(model, prompts[1][None], np.ones((1, len(prompts[1]))), max_new_tokens=1)
  assert out.tokens.shape == (1, 1) and int(out.tokens[0, 0]) == ref_tokens[1, 0]
  np.testing.assert_allclose(out.logps[0, 0], ref_logps[1, 0, ref_tokens[1, 0]], atol=LOGP_TOL)
  ids, mask = padded([prompts[0], prompts[1]], "left")
  mask[0] = 0  # a row without a prompt is finished from the start
  out = generate(model, ids, mask, max_new_tokens=3, pad_id=7)
  np.testing.assert_array_equal(out.lengths, [0, 3])
  np.testing.assert_array_equal(out.tokens[0], 7)
  np.testing.assert_array_equal(out.tokens[1], ref_tokens[1, :3])


def test_a_prompt_that_fills_the_positions_is_refused(family):
  model, _, _, _ = family("llama")
  limit = model.cfg.max_position_embeddings
  ids = np.ones((2, limit - 3), np.int32)
  mask = np.ones_like(ids)
  mask[0, :10] = 0
  with pytest.raises(ValueError, match=f"prompt row 1 has {limit - 3} tokens: with max_new_tokens=4 it needs "
                                       f"{limit + 1} positions, more than the model's max_position_embeddings={limit}"):
    generate(model, ids, mask, max_new_tokens=4)
  with pytest.raises(ValueError, match="a prompt of 9 tokens is longer than the largest prompt bucket 8"):
    generate(model, ids[:, :9], mask[:, :9], max_new_tokens=1, buckets=(4, 8))


@pytest.mark.parametrize("kwargs,message", [(dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
                                            (dict(top_p=1.5), r"top_p=1.5"), (dict(temperature=-0.5), "temperature"),
                                            (dict(top_k=-1), "top_k=-1"), (dict(max_new_tokens=0), "max_new_tokens=0")])
def test_bad_settings_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SamplingSettings(**{"max_new_tokens": 4, **kwargs})


# ---- meshes --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mesh_case():
  """tiny_gemma3 (sliding window 16 < 12 + 8 with local RoPE), 8 right-padded rows, greedy and sampled on 1 device."""
  model = init_model(get_preset("tiny_gemma3"), seed=2)
  model.embed.set_value(model.embed[...] * 30.0)  # tied head: wide logit gaps
  rng = np.random.default_rng(1)
  ids, mask = padded([rng.integers(0, 256, n) for n in (12, 3, 9, 12, 5, 7, 1, 10)], "right")
  single = {kind: generate(model, ids, mask, max_new_tokens=8, **kw) for kind, kw in SAMPLING_KINDS.items()}
  return model, ids, mask, single


SAMPLING_KINDS = {"greedy": {}, "sampled": dict(temperature=1.0, top_k=50, top_p=0.95, seed=3)}


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_meshes_give_the_tokens_and_logps_of_one_device(mesh_case, mesh_shape):
  model, ids, mask, single = mesh_case
  mesh = make_mesh(mesh_shape)
  prepared = decode.prepare(model, mesh)
  assert prepared.params["blocks"]["mlp"]["gate_proj"].sharding.mesh == mesh
  for kind, kw in SAMPLING_KINDS.items():
    out = generate(model, ids, mask, max_new_tokens=8, mesh=mesh, **kw)
    np.testing.assert_array_equal(out.tokens, single[kind].tokens, err_msg=kind)
    np.testing.assert_allclose(out.logps, single[kind].logps, atol=1e-5, err_msg=kind)
    np.testing.assert_array_equal(out.lengths, single[kind].lengths)
  cache = decode.new_cache(prepared, 8, 16 + 7)
  assert cache.k.sharding.spec[1] == (("data", "fsdp") if mesh_shape[0] > 1 else "fsdp")


# ---- Sampler -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_chat():
  model = init_model(get_preset("tiny"), seed=0)
  model.lm_head.set_value(model.lm_head[...] * 30.0)  # wide logit gaps: batch shapes cannot flip a near-tie
  return model, byte_tokenizer()


def test_sampler_answers_in_order_whatever_the_batch_size(tiny_chat):
  model, tokenizer = tiny_chat
  prompts = ["Hello", "Habari yako? Nisaidie tafadhali.", "你好", "x" * 40, "Bonjour"]
  kw = dict(max_new_tokens=6, max_prompt_len=64, progress=False)
  by_two = Sampler(model, tokenizer, batch_size=2, **kw).chat_detailed(prompts, temperature=1.0, seed=4)
  by_eight = Sampler(model, tokenizer, batch_size=8, **kw).chat_detailed(prompts, temperature=1.0, seed=4)
  assert by_two == by_eight
  alone = Sampler(model, tokenizer, batch_size=1, **kw).chat_detailed(prompts[3:4])
  greedy = Sampler(model, tokenizer, batch_size=2, **kw).chat_detailed(prompts)
  assert alone[0] == greedy[3]
  ids = Sampler(model, tokenizer, **kw).encode(prompts[3:4], system="Be brief.")[0]
  assert ids[:2] == [257, 261] and ids[-1] == 260  # <|bos|><|system|> … <|assistant|>
  for g, p in zip(greedy, prompts):
    assert g.n_tokens == 6 and g.truncated and not g.prompt_truncated
    assert g.prompt_tokens == len(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                                                 add_generation_prompt=True)["input_ids"])
  out = generate(model, *padded([np.asarray(Sampler(model, tokenizer, **kw).encode(prompts[:1])[0])], "right"),
                 max_new_tokens=6, eos_ids=(EOS_ID,), pad_id=256)
  assert greedy[0].text == tokenizer.decode(np.asarray(out.tokens[0]), skip_special_tokens=True)


def test_sampler_stops_at_eos_and_reports_long_prompts(tiny_chat, capsys):
  model, tokenizer = tiny_chat
  first = Sampler(model, tokenizer, max_new_tokens=1, max_prompt_len=16, progress=False).encode(["hi"])
  first_token = int(generate(model, np.asarray(first), np.ones((1, len(first[0]))), max_new_tokens=1).tokens[0, 0])
  stopping = nnx.eval_shape(lambda: type(model)(model.cfg.replace(eos_token_id=first_token), rngs=nnx.Rngs(0)))
  nnx.update(stopping, nnx.state(model))  # the same weights; the config's eos is the first greedy token
  sampler = Sampler(stopping, tokenizer, max_new_tokens=5, max_prompt_len=16, progress=False)
  assert sampler.eos_ids == (first_token, EOS_ID)
  out = sampler.chat_detailed(["hi"])
  assert out[0].n_tokens == 1 and not out[0].truncated

  prompts = ["short", "y" * 30, "z" * 40]
  strict = Sampler(model, tokenizer, max_new_tokens=2, max_prompt_len=16, progress=False)
  with pytest.raises(PromptTooLong, match=r"2 of 3 prompts are longer than max_prompt_len=16 tokens \(longest 43; "
                                          r"prompt indices 1, 2\)"):
    strict.chat(prompts)
  lenient = Sampler(model, tokenizer, max_new_tokens=2, max_prompt_len=16, overflow="truncate", progress=False)
  out = lenient.chat_detailed(prompts)
  assert "2 of 3 prompts are longer" in capsys.readouterr().err
  assert [g.prompt_truncated for g in out] == [False, True, True] and [g.prompt_tokens for g in out][1:] == [16, 16]
  with pytest.raises(ValueError, match="max_prompt_len \\+ max_new_tokens = 2000 \\+ 100 is more than"):
    Sampler(model, tokenizer, max_prompt_len=2000, max_new_tokens=100)
