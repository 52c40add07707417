"""
Where text comes from. One spec string names a source:

    'stories'                         the embedded offline corpus below (no files, no network)
    'path/to/file.txt'                one text per line (blank lines skipped)
    'path/to/file.jsonl'              one JSON object per line; the text is under `text_field`
    'hf:NAME[:CONFIG]'                a Hugging Face hub dataset (needs the network), e.g.
                                      'hf:wikimedia/wikipedia:20231101.en'

`load_texts(spec, split)` returns an indexable sequence of strings. The hub path keeps the Arrow-backed
dataset (memory-mapped, so Wikipedia is not copied into Python strings); everything else is a list.

The embedded corpus: short stories built from a fixed grammar by a seeded generator, with a checker that
parses a story and says whether it is valid. Valid means the grammar holds AND the story is consistent:
the pronoun fits the first character, the object named in the second sentence is the one found in the
first, the giver and the receiver differ, and the feeling follows from the gift. A generated sample is
either valid or not, so generation quality on this corpus is measurable exactly, on a CPU, in minutes.
"""
import json
import os
import random
import re
import sys

from common import die

# -----------------------------------------------------------------------------
# the embedded story corpus

NAMES = {'anna': 'she', 'maria': 'she', 'lucy': 'she', 'emma': 'she', 'sara': 'she', 'kate': 'she',
         'tom': 'he', 'jack': 'he', 'sam': 'he', 'ben': 'he', 'max': 'he', 'leo': 'he'}
COLORS = ['red', 'blue', 'green', 'yellow', 'black', 'white', 'small', 'big']
OBJECTS = ['ball', 'book', 'kite', 'hat', 'cup', 'box', 'toy', 'map', 'key', 'bag']
PLACES = ['park', 'garden', 'kitchen', 'school', 'forest', 'street', 'shop', 'river']
LIKED = {'happy', 'glad', 'excited'}           # feelings for an object the receiver likes
DISLIKED = {'sad', 'angry', 'bored'}           # ... and for one the receiver does not
LIKES = {'ball', 'book', 'kite', 'toy', 'map'}  # what everybody likes; the rest nobody does

_STORY = re.compile(r"^(one day, )?(\w+) found a (\w+) (\w+) in the (\w+)\. (he|she) gave (?:the (\w+)|it) "
                    r"to (\w+)\. (\w+) was (very )?(\w+)\.$")


def make_story(rng):
    giver, receiver = rng.sample(sorted(NAMES), 2)
    color, obj, place = rng.choice(COLORS), rng.choice(OBJECTS), rng.choice(PLACES)
    feeling = rng.choice(sorted(LIKED if obj in LIKES else DISLIKED))
    opening = rng.choice(['', 'one day, '])                  # three optional variations, so that
    gift = rng.choice([f'the {obj}', 'it'])                  # lengths vary (21 to 26 tokens) and the
    very = rng.choice(['', 'very '])                         # decoder must learn where [SEP] goes
    return (f"{opening}{giver} found a {color} {obj} in the {place}. {NAMES[giver]} gave {gift} to "
            f"{receiver}. {receiver} was {very}{feeling}.")


def stories(n, seed):
    """n stories from the generator seeded with `seed` (lower case, like the uncased BERT vocabulary)."""
    rng = random.Random(seed)
    return [make_story(rng) for _ in range(n)]


def _parse(text):
    return _STORY.match(re.sub(r'\s+([.,])', r'\1', text.strip().lower()))  # "park ." -> "park."


def is_valid_story(text):
    """True when `text` is a well-formed, consistent story of the grammar above."""
    m = _parse(text)
    if m is None:
        return False
    _, giver, color, obj, place, pron, obj2, receiver, receiver2, _, feeling = m.groups()
    return (giver in NAMES and receiver in NAMES and giver != receiver and receiver2 == receiver
            and pron == NAMES[giver] and color in COLORS and obj in OBJECTS and obj2 in (None, obj)
            and place in PLACES and feeling in (LIKED if obj in LIKES else DISLIKED))


def swap_story(text):
    """
    The tiny conditional task: the same story told with giver and receiver swapped (the pronoun follows
    the new giver). The target is again a valid story, so the story autoencoder can write it, and it is
    a function of the source, so exact match on held-out sources measures whether the source is used.
    """
    opening, giver, color, obj, place, _, obj2, receiver, _, very, feeling = _parse(text).groups()
    gift = f'the {obj2}' if obj2 else 'it'
    return (f"{opening or ''}{receiver} found a {color} {obj} in the {place}. {NAMES[receiver]} gave {gift} to "
            f"{giver}. {giver} was {very or ''}{feeling}.")


def story_pairs(n, seed):
    """n (source, target) pairs of the tiny conditional task."""
    return [dict(source=s, target=swap_story(s)) for s in stories(n, seed)]


# -----------------------------------------------------------------------------
# loading


def read_lines(path):
    """The non-blank lines of a file ('-' = standard input), or one clear line if it is not there."""
    if path != '-' and not os.path.isfile(path):
        die(f"data file '{path}' not found")
    f = sys.stdin if path == '-' else open(path, encoding='utf-8')
    return [(i, line.rstrip('\n')) for i, line in enumerate(f, 1) if line.strip()]


def read_jsonl(path, fields):
    """The rows (dicts) of a JSONL file, each checked to hold a string under every name in `fields`."""
    rows = []
    for i, line in read_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            die(f"{path}:{i} is not valid JSON ({e.msg})")
        missing = [k for k in fields if not (isinstance(row, dict) and isinstance(row.get(k), str))]
        if missing:
            die(f"{path}:{i} has no string field '{missing[0]}'")
        rows.append(row)
    return rows


def load_texts(spec, split='train', text_field='text', n_stories=20000, seed=0):
    """
    The texts of `spec` (see the module docstring). For 'stories', split 'train' and 'validation' come
    from different generator seeds; the local and hub sources take the split as given (local files have
    none: pass a separate file as the validation spec, or let the script hold out a slice).
    """
    if spec == 'stories':
        return stories(n_stories, seed=seed if split == 'train' else seed + 1_000_003)
    if spec.startswith('hf:'):
        import datasets  # imported here: only hub users pay for it
        name, _, config = spec[3:].partition(':')
        ds = datasets.load_dataset(name, config or None, split=split)
        if text_field not in ds.column_names:
            die(f"dataset '{name}' has no column '{text_field}' (columns: {', '.join(ds.column_names)})")
        texts = ds.select_columns([text_field])
        return HubTexts(texts, text_field)
    if not spec.endswith(('.txt', '.jsonl')):
        die(f"data '{spec}' is not 'stories', 'hf:NAME[:CONFIG]', or a .txt/.jsonl file")
    if spec.endswith('.jsonl'):
        texts = [row[text_field] for row in read_jsonl(spec, [text_field])]
    else:
        texts = [line for _, line in read_lines(spec)]
    if not texts:
        die(f"data file '{spec}' holds no texts")
    return texts


class HubTexts:
    """A read-only list of strings over an Arrow-backed hub dataset (indexing by a list fetches a batch)."""

    def __init__(self, ds, field):
        self.ds, self.field = ds, field

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, idx):
        if isinstance(idx, int):
            return self.ds[idx][self.field]
        return self.ds[list(idx)][self.field]


def load_pairs(spec, split='train', n_stories=20000, seed=0):
    """
    Source/target pairs: 'stories' (the tiny task above) or a .jsonl of {"source": ..., "target": ...}
    lines, the universal format for conditional training (write your own pairs into one).
    """
    if spec == 'stories':
        return story_pairs(n_stories, seed=seed if split == 'train' else seed + 1_000_003)
    if not spec.endswith('.jsonl'):
        die(f"pairs data '{spec}' is not 'stories' or a .jsonl file of source/target lines")
    pairs = [dict(source=row['source'], target=row['target']) for row in read_jsonl(spec, ['source', 'target'])]
    if not pairs:
        die(f"data file '{spec}' holds no pairs")
    return pairs


def split_off(texts, n_val, seed):
    """Hold out n_val texts (a seeded choice) as validation from a source that has no split of its own."""
    if len(texts) <= n_val:
        die(f"data has {len(texts)} texts, not more than the {n_val} to hold out for validation (set val_size)")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    return [texts[i] for i in train], [texts[i] for i in val]


def train_and_val(cfg, pairs=False):
    """
    The (train, validation) lists of a training run, by the rules train_ae.py and train_diff.py share: the
    texts (or, with pairs, the source/target pairs) of cfg['data']; validation from cfg['val_data'] if set,
    from the stories' own validation stream for 'stories', else val_size held out of the training data.
    Validation is cut to its first eval_size items.
    """
    def load(spec, split, n):
        if pairs:
            return load_pairs(spec, split, n, cfg['seed'])
        return load_texts(spec, split, cfg['text_field'], n, cfg['seed'])
    train = load(cfg['data'], 'train', cfg['n_stories'])
    if cfg['val_data']:
        val = load(cfg['val_data'], 'validation', cfg['n_stories'])
    elif cfg['data'] == 'stories':
        val = load('stories', 'validation', cfg['val_size'])
    else:
        train, val = split_off(train, cfg['val_size'], cfg['seed'])
    return train, take(val, range(min(cfg['eval_size'], len(val))))


def take(texts, idx):
    """texts[idx] for a list of indices, whatever the sequence type."""
    if isinstance(texts, HubTexts):
        return texts[idx]
    return [texts[i] for i in idx]
