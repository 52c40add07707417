"""
Real English text without a hub: WordNet 3.0's glosses and example sentences, from Debian's `wordnet-base`
package (wordnet-base 1:3.0-37: 155,051 distinct texts of three words or more), written one text per line
for the `.txt` data path.

    apt-get download wordnet-base && dpkg -x wordnet-base_*.deb /tmp/wn    # no root needed
    python data/prepare_wordnet.py /tmp/wn/usr/share/wordnet               # -> data/wordnet/{train,validation}.txt
    python train_ae.py config/tiny_ae.py config/ae_wordnet.py

(On a machine with `wordnet-base` installed the folder is /usr/share/wordnet, the default.) A gloss line of
data.{noun,verb,adj,adv} ends in '| definition; "example"; "example"'; each definition and each example is
one text. Duplicates are dropped; a seeded shuffle holds out `n_val` texts. data/*/ is git-ignored: carry
the folder to a GPU machine rather than committing it.
"""
import os
import random
import re
import sys

POS_FILES = ('data.noun', 'data.verb', 'data.adj', 'data.adv')
QUOTED = re.compile(r'"([^"]+)"')


def gloss_texts(line):
    """The definition and the example sentences of one data.* line; [] for the licence header lines."""
    if line.startswith('  ') or ' | ' not in line:
        return []
    gloss = line.split(' | ', 1)[1].strip()
    examples = [e.strip() for e in QUOTED.findall(gloss)]
    definition = QUOTED.sub('', gloss).strip(' ;')
    return [t for t in [definition] + examples if len(t.split()) >= 3]  # drop one- and two-word fragments


def main(src='/usr/share/wordnet', out_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'wordnet'),
         n_val=2000, seed=0):
    missing = [f for f in POS_FILES if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise SystemExit(f"error: {src} has no {', '.join(missing)}: pass the folder holding WordNet's data.* files")
    texts = []
    for name in POS_FILES:
        with open(os.path.join(src, name), encoding='utf-8', errors='replace') as f:
            for line in f:
                texts.extend(gloss_texts(line))
    texts = list(dict.fromkeys(texts))  # de-duplicate, keeping the first occurrence's order
    random.Random(seed).shuffle(texts)
    os.makedirs(out_dir, exist_ok=True)
    for split, part in (('validation', texts[:n_val]), ('train', texts[n_val:])):
        path = os.path.join(out_dir, f'{split}.txt')
        with open(path, 'w', encoding='utf-8') as f:
            f.writelines(t + '\n' for t in part)
        print(f"{path}: {len(part)} texts")


if __name__ == '__main__':
    main(*sys.argv[1:2])
