"""
Write the paper's three conditional datasets (App. A) from the Hugging Face hub as source/target JSONL, the
format train_diff.py --task=conditional reads. Needs the network and `datasets`.

    python data/prepare_pairs.py xsum        # -> data/xsum/{train,validation,test}.jsonl
    python data/prepare_pairs.py squad       # -> data/squad/{train,validation}.jsonl
    python data/prepare_pairs.py paradetox   # -> data/paradetox/{train,validation}.jsonl

The paper's truncation (XSum articles 512 tokens and summaries 50; SQuAD contexts 512; ParaDetox 40 on each
side) is applied in tokens at training time, where it is counted: src_max_len for the source and the
autoencoder's max_len for the target (see config/cond_*.py). This script only reshapes the rows.
Hub names and fields were written from the datasets' cards and not checked here (no network): if a name
moved, change it below.
"""
import json
import os
import random
import sys

SPECS = {
    # name: (hub dataset, config, {split: hub split}, row -> (source, target))
    'xsum': ('EdinburghNLP/xsum', None, dict(train='train', validation='validation', test='test'),
             lambda r: (r['document'], r['summary'])),
    # question generation: the answer and its context in, the question out
    'squad': ('rajpurkar/squad_v2', None, dict(train='train', validation='validation'),
              lambda r: (f"{r['answers']['text'][0]} | {r['context']}", r['question']) if r['answers']['text'] else None),
    'paradetox': ('s-nlp/paradetox', None, dict(train='train'),
                  lambda r: (r['en_toxic_comment'], r['en_neutral_comment'])),
}


def main(name, out_root=os.path.dirname(os.path.abspath(__file__))):
    import datasets
    if name not in SPECS:
        raise SystemExit(f"error: unknown dataset '{name}' (one of {', '.join(SPECS)})")
    hub, config, splits, to_pair = SPECS[name]
    os.makedirs(os.path.join(out_root, name), exist_ok=True)
    for split, hub_split in splits.items():
        rows = [p for p in map(to_pair, datasets.load_dataset(hub, config, split=hub_split)) if p]
        if name == 'paradetox':  # one split on the hub: hold out 1000 pairs, seeded
            random.Random(0).shuffle(rows)
            parts = dict(validation=rows[:1000], train=rows[1000:])
        else:
            parts = {split: rows}
        for part, part_rows in parts.items():
            path = os.path.join(out_root, name, f'{part}.jsonl')
            with open(path, 'w') as f:
                f.writelines(json.dumps(dict(source=s, target=t)) + '\n' for s, t in part_rows)
            print(f"{path}: {len(part_rows)} pairs")


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else '')
