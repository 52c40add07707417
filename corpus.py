"""
Where text comes from, and how it becomes training rows.

Sources. One spec string names a source of documents:

    'stories'                         the embedded offline corpus below (no files, no network)
    'chained'                         the same stories in documents of 4 chained ones (long text, below)
    'path/to/file.txt'                one document per line (txt_docs='line'), or documents separated by
                                      blank lines (txt_docs='blank'; a single line break is a paragraph end)
    'path/to/file.jsonl'              one JSON object per line; the document is under `text_field`
    'path/to/file.csv'                one row per document, the column `text_field`; ROCStories' official
                                      CSV (columns sentence1..sentence5) joins the five sentences into one story
    'hf:NAME[:CONFIG]'                a Hugging Face hub dataset (needs the network and `datasets`), e.g.
                                      'hf:wikimedia/wikipedia:20231101.en'; streamed with streaming=True

Preparation (nanoGPT's data/*/prepare.py, made general): `prepare` reads the documents once, splits each into
rows of at most L tokens with `chunk_document` (whole sentences packed greedily, a paragraph end closing a row
that is at least half full, a sentence longer than a row cut at token boundaries and counted), and writes a
folder the trainers index by row:

    train.bin, val.bin            uint16 (uint32 if the vocabulary needs it) memmaps of shape (rows, L):
                                  [CLS] tokens [SEP] [PAD] ..., exactly what the encoder reads
    train_lens.bin, val_lens.bin  uint16 (rows,): real tokens per row ([CLS] and [SEP] included)
    train_docs.bin, val_docs.bin  int64 (documents + 1,): the first row of each document (rows of one
                                  document are consecutive; long-text training reads windows of them)
    meta.json                     source, tokenizer name and fingerprint, L, dtype, and per split the counts
                                  of documents, rows, tokens, sentences cut and empty texts dropped
    (pairs: train_src.bin / val_src.bin, source rows of src_max_len tokens aligned with the targets)

Validation is held out by document: the first documents of the source, whole, until val_size rows are
reached (or val_data's documents, or the stories' own validation stream), so no document has rows in both
splits. Nothing corpus-sized is ever a Python object: documents stream through in batches, tokenized by
num_proc worker processes, and rows are appended to the files as they come. (Our choice over nanoGPT's
`datasets.map(num_proc=...)`: one mechanism for every source, hub, local or embedded, that keeps at most
2 x num_proc batches in memory, writes no second Arrow copy of the corpus into the hub cache, and needs no
`datasets` for local files.)

The embedded corpus: short stories built from a fixed grammar by a seeded generator, with a checker that
parses a story and says whether it is valid. Valid means the grammar holds AND the story is consistent:
the pronoun fits the first character, the object named in the second sentence is the one found in the
first, the giver and the receiver differ, and the feeling follows from the gift. A generated sample is
either valid or not, so generation quality on this corpus is measurable exactly, on a CPU, in minutes.
"""
import collections
import csv
import hashlib
import json
import os
import random
import re
import shutil
import sys

import numpy as np
import torch

from common import die, progress

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


CHAIN_LEN = 4  # stories per document of the 'chained' source


def chained_stories(n_docs, K, seed):
    """
    n_docs documents (a generator: nothing corpus-sized is kept), each a list of K chained stories, the
    long-text task of the block model: story k+1's giver is story k's receiver, and the object (with its
    colour) carries over, while place, receiver, feeling and wording are drawn afresh. One story is one
    chunk (block). Whether a continuation follows the chain is exact to check (chain_ok).
    """
    rng = random.Random(seed)
    for _ in range(n_docs):
        giver, color, obj = rng.choice(sorted(NAMES)), rng.choice(COLORS), rng.choice(OBJECTS)
        doc = []
        for _ in range(K):
            receiver = rng.choice(sorted(set(NAMES) - {giver}))
            feeling = rng.choice(sorted(LIKED if obj in LIKES else DISLIKED))
            opening, gift, very = rng.choice(['', 'one day, ']), rng.choice([f'the {obj}', 'it']), rng.choice(['', 'very '])
            doc.append(f"{opening}{giver} found a {color} {obj} in the {rng.choice(PLACES)}. {NAMES[giver]} gave "
                       f"{gift} to {receiver}. {receiver} was {very}{feeling}.")
            giver = receiver
        yield doc


def chain_ok(a, b):
    """True when a and b are valid stories and b continues a's chain (a's receiver gives a's object on)."""
    if not (is_valid_story(a) and is_valid_story(b)):
        return False
    (_, _, color_a, obj_a, _, _, _, receiver_a, *_), (_, giver_b, color_b, obj_b, *_) = _parse(a).groups(), _parse(b).groups()
    return giver_b == receiver_a and (color_b, obj_b) == (color_a, obj_a)


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
# reading local files


def read_lines(path):
    """The non-blank lines of a file ('-' = standard input) as (line number, text), or one clear line if it
    is not there or not UTF-8 text. A list: for small files (sources, prompts, sample files), not corpora."""
    return list(iter_lines(path))


def iter_lines(path, keep_blank=False):
    """(line number, text) of a file ('-' = standard input), streamed: bad input ends in one clear line."""
    if path != '-' and not os.path.isfile(path):
        die(f"data file '{path}' not found")
    f = sys.stdin if path == '-' else open(path, encoding='utf-8')
    i = 0
    try:
        for i, line in enumerate(f, 1):
            if keep_blank or line.strip():
                yield i, line.rstrip('\n')
    except UnicodeDecodeError as e:
        die(f"data file '{path}' is not UTF-8 text (line {i + 1}, byte {e.start}: {e.reason})")
    finally:
        if f is not sys.stdin:
            f.close()


def parse_json_line(path, i, line, fields):
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        die(f"{path}:{i} is not valid JSON ({e.msg})")
    missing = [k for k in fields if not (isinstance(row, dict) and isinstance(row.get(k), str))]
    if missing:
        die(f"{path}:{i} has no string field '{missing[0]}'")
    return row


def read_jsonl(path, fields):
    """The rows (dicts) of a small JSONL file, each checked to hold a string under every name in `fields`."""
    return [parse_json_line(path, i, line, fields) for i, line in iter_lines(path)]


# -----------------------------------------------------------------------------
# documents: every source as a stream of strings (pairs: of (source, target))


def documents(spec, split, cfg, n_stories=None):
    """
    The documents of `spec` (see the module docstring) as an iterator of strings. split: 'train' or
    'validation' ('stories' draws them from two generator seeds; hub data reads the split of that name;
    local files have no split). cfg gives text_field, txt_docs, n_stories, seed, streaming.
    """
    if spec == 'stories':
        seed = cfg['seed'] if split == 'train' else cfg['seed'] + 1_000_003
        rng = random.Random(seed)
        return (make_story(rng) for _ in range(n_stories or cfg['n_stories']))
    if spec == 'chained':  # n_stories stories in documents of CHAIN_LEN, one story a paragraph (a row at L >= 28)
        n_docs = (n_stories or cfg['n_stories']) // CHAIN_LEN
        return ('\n'.join(doc) for doc in chained_stories(n_docs, CHAIN_LEN, cfg['seed']))
    if spec.startswith('hf:'):
        return hub_column(spec, split, cfg, cfg['text_field'])
    if spec.endswith('.txt'):
        return txt_documents(spec, cfg['txt_docs'])
    if spec.endswith('.jsonl'):
        return (parse_json_line(spec, i, line, [cfg['text_field']])[cfg['text_field']]
                for i, line in iter_lines(spec))
    if spec.endswith('.csv'):
        return csv_documents(spec, cfg['text_field'])
    if os.path.isdir(spec):
        die(f"data '{spec}' is a folder without meta.json: not a prepared folder (data/prepare.py writes one)")
    die(f"data '{spec}' is not 'stories', 'hf:NAME[:CONFIG]', a .txt/.jsonl/.csv file or a prepared folder")


def txt_documents(path, mode):
    if mode == 'line':
        yield from (line for _, line in iter_lines(path))
        return
    if mode != 'blank':
        die(f"txt_docs must be 'line' or 'blank', not '{mode}'")
    lines = []
    for _, line in iter_lines(path, keep_blank=True):
        if line.strip():
            lines.append(line)
        elif lines:
            yield '\n'.join(lines)
            lines = []
    if lines:
        yield '\n'.join(lines)


def csv_documents(path, field):
    if not os.path.isfile(path):
        die(f"data file '{path}' not found")
    try:
        with open(path, encoding='utf-8', newline='') as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            story = [f'sentence{i}' for i in range(1, 6)]
            if all(c in cols for c in story):      # ROCStories' official CSV: five sentences, one story
                yield from (' '.join(row[c].strip() for c in story) for row in reader)
            elif field in cols:
                yield from (row[field] for row in reader)
            else:
                die(f"data file '{path}' has no column '{field}' and no sentence1..sentence5 "
                    f"(columns: {', '.join(cols)})")
    except UnicodeDecodeError as e:
        die(f"data file '{path}' is not UTF-8 text (byte {e.start}: {e.reason})")
    except csv.Error as e:
        die(f"data file '{path}' is not valid CSV ({e})")


def hub_column(spec, split, cfg, *fields):
    """One or more string columns of a hub dataset, streamed or memory-mapped (never copied into a list)."""
    try:
        import datasets  # imported here: only hub users pay for it
    except ImportError:
        die(f"data '{spec}' needs the 'datasets' package (pip install datasets)")
    import huggingface_hub.utils
    datasets.utils.logging.set_verbosity_error()        # the failure below is reported in one line, not
    huggingface_hub.utils.logging.set_verbosity_error() # after the hub client's own warnings
    name, _, config = spec[3:].partition(':')
    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=cfg['streaming'])
    except Exception as e:  # offline, a typo, a missing split: one line, not the hub client's traceback
        die(f"hub dataset '{name}' (split '{split}') could not be loaded "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
    cols = ds.column_names or []
    missing = [f for f in fields if cols and f not in cols]
    if missing:
        die(f"dataset '{name}' has no column '{missing[0]}' (columns: {', '.join(cols)})")
    for batch in ds.iter(batch_size=1000):
        yield from (batch[fields[0]] if len(fields) == 1 else zip(*(batch[f] for f in fields)))


def pair_documents(spec, split, cfg, n_stories=None):
    """(source, target) pairs: 'stories' (the tiny task), a .jsonl of source/target lines, or hub data."""
    if spec == 'stories':
        for s in documents('stories', split, cfg, n_stories):
            yield s, swap_story(s)
    elif spec.endswith('.jsonl'):
        for i, line in iter_lines(spec):
            row = parse_json_line(spec, i, line, ['source', 'target'])
            yield row['source'], row['target']
    elif spec.startswith('hf:'):
        yield from hub_column(spec, split, cfg, 'source', 'target')
    else:
        die(f"pairs data '{spec}' is not 'stories', 'hf:NAME[:CONFIG]' or a .jsonl file of source/target lines")


# -----------------------------------------------------------------------------
# chunking: a document -> rows of at most L tokens, cut at sentence boundaries

SENTENCE_END = re.compile(r'(?<=[.!?])\s+')


def split_sentences(text):
    """The paragraphs (lines) of a document, each a list of its sentences."""
    return [[s for s in SENTENCE_END.split(p.strip()) if s] for p in text.split('\n') if p.strip()]


def chunk_document(text, tokenizer, max_len):
    """The rows of one document (lists of token ids without [CLS]/[SEP]) and how many sentences were cut."""
    return chunk_documents([text], tokenizer, max_len)[0]


def chunk_documents(texts, tokenizer, max_len):
    """
    [(rows, n_cut)] for a batch of documents (one tokenizer call for all their sentences). A row holds at
    most L - 2 tokens ([CLS] and [SEP] take the other two). Sentences are tokenized one by one: for a
    WordPiece (BERT) tokenizer the tokens of joined sentences are the concatenation of each sentence's
    tokens, so a row decodes to its sentences joined by spaces. Packing: whole sentences, greedily; a
    paragraph end closes a row at least half full (so rows rarely straddle paragraphs); a sentence longer
    than a row is cut at token boundaries into full rows, its rest packed on, and counted.
    """
    paras = [split_sentences(t) for t in texts]
    flat = [s for doc in paras for p in doc for s in p]
    ids = iter(tokenizer(flat, add_special_tokens=False)['input_ids'] if flat else [])
    budget = max_len - 2
    out = []
    for doc in paras:
        rows, row, n_cut = [], [], 0
        for p in doc:
            for _ in p:
                s = next(ids)
                if len(s) > budget:                                           # longer than a row: cut
                    n_cut += 1
                    if row:
                        rows.append(row)
                    rows.extend(s[i:i + budget] for i in range(0, len(s) - budget, budget))
                    row = s[(len(s) - 1) // budget * budget:]
                    continue
                if len(row) + len(s) > budget:
                    rows.append(row)
                    row = []
                row = row + s
            if 2 * len(row) >= budget:                                        # a paragraph end closes a half-full row
                rows.append(row)
                row = []
        if row:
            rows.append(row)
        out.append((rows, n_cut))
    return out


def tokenizer_fingerprint(tokenizer):
    """A short id of what a tokenizer does (vocabulary, normaliser, pre-tokeniser): data prepared with one
    is refused by a model that reads ids with another. Two names for the same tokenizer agree."""
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is not None:   # truncation and padding are call-time state, not what the tokenizer does
        desc = json.dumps({k: v for k, v in json.loads(backend.to_str()).items() if k not in ('truncation', 'padding')},
                          sort_keys=True)
    else:
        desc = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha1(desc.encode()).hexdigest()[:16]


# -----------------------------------------------------------------------------
# prepare: documents -> row files, in parallel, streamed

# what shapes the rows, with the defaults a trainer's config may leave out
PREPARE_DEFAULTS = dict(data='stories', val_data='', val_size=2000, text_field='text', txt_docs='line',
                        n_stories=20000, seed=1337, streaming=False, max_len=128, pairs=False, src_max_len=0)
PREPARE_KEYS = tuple(PREPARE_DEFAULTS)
_worker = {}


def _init_worker(tokenizer_path, parallel=True):
    if not parallel:  # num_proc workers: one thread each (the fast tokenizer's own threads would oversubscribe)
        os.environ['TOKENIZERS_PARALLELISM'] = 'false'
    from transformers import AutoTokenizer
    _worker['tok'] = AutoTokenizer.from_pretrained(tokenizer_path)


def _chunk_batch(args):
    """Worker: a batch of documents (or pairs) -> rows as numpy arrays, with per-document counts."""
    docs, max_len, pairs, src_max_len = args
    tok = _worker['tok']
    if pairs:
        return dict(tgt=_rows_of(tok, [t for _, t in docs], max_len), src=_rows_of(tok, [s for s, _ in docs], src_max_len))
    chunks = chunk_documents(docs, tok, max_len)                              # an empty text gives no rows
    ids, lens = _pad_rows(tok, [r for rs, _ in chunks for r in rs], max_len)
    return dict(ids=ids, lens=lens, doc_rows=np.array([len(rs) for rs, _ in chunks], dtype=np.int64),
                doc_cut=np.array([c for _, c in chunks], dtype=np.int64))


def _rows_of(tok, texts, max_len):
    """Pairs are not chunked: each text is one row, cut (its [SEP] kept) when longer, and counted."""
    rows = tok(list(texts), add_special_tokens=False)['input_ids']
    ids, lens = _pad_rows(tok, [r[:max_len - 2] for r in rows], max_len)
    return ids, lens, np.array([len(r) > max_len - 2 for r in rows])


def _pad_rows(tok, rows, max_len):
    ids = np.full((len(rows), max_len), tok.pad_token_id, dtype=np.int64)
    lens = np.empty(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, 0], ids[i, 1:len(r) + 1], ids[i, len(r) + 1] = tok.cls_token_id, r, tok.sep_token_id
        lens[i] = len(r) + 2
    return ids, lens


def _in_order(pool, fn, items, depth):
    """(key, fn(arg)) for each (key, arg) of items, in order: pool.imap without its unbounded read-ahead (at
    most `depth` args in flight); the keys stay in this process."""
    pending = collections.deque()
    for key, arg in items:
        pending.append((key, pool.apply_async(fn, (arg,)) if pool else arg))
        while len(pending) > depth or (pool is None and pending):
            key, r = pending.popleft()
            yield key, (r.get() if pool else fn(r))
    while pending:
        key, r = pending.popleft()
        yield key, r.get()


def _batched(it, n):
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class _SplitWriter:
    """Appends rows of one split to its files and counts them."""

    def __init__(self, folder, split, dtype, pairs):
        self.files = {k: open(os.path.join(folder, f'{split}{k}.bin'), 'wb')
                      for k in (['', '_lens', '_docs'] + (['_src', '_src_lens'] if pairs else []))}
        self.dtype, self.pairs = dtype, pairs
        self.counts = dict(documents=0, rows=0, tokens=0, sentences_cut=0, empty_dropped=0)
        if pairs:
            self.counts = dict(documents=0, rows=0, tokens=0, targets_cut=0, sources_cut=0, source_tokens=0)
        self.files['_docs'].write(np.zeros(1, np.int64).tobytes())

    def write_rows(self, ids, lens, suffix=''):
        self.files[suffix].write(ids.astype(self.dtype).tobytes())
        self.files[suffix + '_lens'].write(lens.astype(np.uint16).tobytes())

    def add(self, r, lo=0, hi=None):
        """Documents lo:hi of a worker result (all of them by default)."""
        c = self.counts
        if self.pairs:
            (ids, lens, cut), (sids, slens, scut) = r['tgt'], r['src']
            hi = len(ids) if hi is None else hi
            self.write_rows(ids[lo:hi], lens[lo:hi])
            self.write_rows(sids[lo:hi], slens[lo:hi], '_src')
            offsets = c['rows'] + np.arange(1, hi - lo + 1)
            c['targets_cut'] += int(cut[lo:hi].sum())
            c['sources_cut'] += int(scut[lo:hi].sum())
            c['source_tokens'] += int(slens[lo:hi].sum())
            a, b, n_docs = lo, hi, hi - lo
        else:
            hi = len(r['doc_rows']) if hi is None else hi
            starts = np.concatenate([[0], np.cumsum(r['doc_rows'])])
            a, b = starts[lo], starts[hi]
            kept = r['doc_rows'][lo:hi] > 0                                   # empty texts are dropped, counted
            offsets = c['rows'] + (starts[lo + 1:hi + 1] - a)[kept]
            self.write_rows(r['ids'][a:b], r['lens'][a:b])
            c['sentences_cut'] += int(r['doc_cut'][lo:hi].sum())
            c['empty_dropped'] += int((~kept).sum())
            n_docs = int(kept.sum())
            lens = r['lens']
        c['tokens'] += int(lens[a:b].sum())
        self.files['_docs'].write(offsets.astype(np.int64).tobytes())
        c['documents'] += n_docs
        c['rows'] += int(b - a)

    def close(self):
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()


def prepare(cfg, out_dir, encoder, tokenizer_path, num_proc=1, overwrite=False, log=print):
    """
    Turn cfg['data'] (and cfg['val_data']) into a prepared folder `out_dir` (see the module docstring).
    cfg holds PREPARE_KEYS. Written to a temporary folder and renamed, so a half-written folder is never
    taken for a prepared one; an existing prepared folder is replaced only with overwrite=True.
    """
    from transformers import AutoTokenizer
    out_dir = os.path.abspath(out_dir)
    if os.path.isfile(os.path.join(out_dir, 'meta.json')) and not overwrite:
        die(f"'{out_dir}' is already a prepared folder; pass --overwrite=True to replace it")
    if os.path.exists(out_dir) and not os.path.isfile(os.path.join(out_dir, 'meta.json')) and \
            (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        die(f"'{out_dir}' exists and is not a prepared folder: choose another out_dir")
    for key, low in (('max_len', 3), ('val_size', 1), ('n_stories', 1)) + ((('src_max_len', 3),) if cfg['pairs'] else ()):
        if cfg[key] < low:
            die(f"{key}={cfg[key]} must be at least {low}")
    if num_proc < 1:
        die(f"num_proc={num_proc} must be at least 1")
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    dtype = np.uint16 if len(tok) <= 2 ** 16 else np.uint32
    pairs, val_size = cfg['pairs'], cfg['val_size']
    get = pair_documents if pairs else documents
    if cfg['val_data']:                     # validation from its own source, train from all of data
        tagged = _chain(('val', get(cfg['val_data'], 'validation', cfg)), ('train', get(cfg['data'], 'train', cfg)))
    elif cfg['data'] == 'stories':          # the stories' own validation stream (another generator seed)
        tagged = _chain(('val', get('stories', 'validation', cfg, n_stories=val_size)),
                        ('train', get('stories', 'train', cfg)))
    else:                                   # the first documents of data, whole, until val_size rows
        tagged = _chain(('auto', get(cfg['data'], 'train', cfg)))
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        die(f"cannot create '{parent}' ({e.strerror})")
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    pool = None
    try:
        os.makedirs(tmp)
        writers = {s: _SplitWriter(tmp, s, dtype, pairs) for s in ('train', 'val')}
        if num_proc > 1:
            import multiprocessing
            pool = multiprocessing.get_context('spawn').Pool(num_proc, _init_worker, (tokenizer_path, False))
        else:
            _init_worker(tokenizer_path)
        jobs = ((tags, (docs, cfg['max_len'], pairs, cfg['src_max_len']))
                for tags, docs in _tagged_batches(tagged, 256))
        bar = progress(unit=' docs', desc=f"prepare {cfg['data']}")
        for tags, r in _in_order(pool, _chunk_batch, jobs, 2 * num_proc):
            rows_per_doc = np.ones(len(tags), np.int64) if pairs else r['doc_rows']
            dests, val_rows = [], writers['val'].counts['rows']
            for tag, k in zip(tags, rows_per_doc):                            # where each document goes
                if tag == 'train' or (tag == 'auto' and val_rows >= val_size):
                    dests.append('train')
                elif val_rows >= val_size:
                    dests.append(None)                                        # val_data beyond val_size: unused
                else:
                    dests.append('val')
                    val_rows += int(k)
            i = 0
            while i < len(dests):                                             # runs of one destination
                j = i
                while j < len(dests) and dests[j] == dests[i]:
                    j += 1
                if dests[i]:
                    writers[dests[i]].add(r, i, j)
                i = j
            bar.update(len(tags))
        bar.close()
        for w in writers.values():
            w.close()
        counts = {s: w.counts for s, w in writers.items()}
        if counts['val']['rows'] + counts['train']['rows'] == 0:
            die(f"data '{cfg['data']}' holds no text (0 rows)")
        if counts['val']['rows'] == 0 or counts['train']['rows'] == 0:
            which = 'validation' if counts['val']['rows'] == 0 else 'training'
            die(f"data '{cfg['data']}' left no {which} rows ({counts['train']['rows'] + counts['val']['rows']} rows "
                f"in all, val_size={val_size}): give more text, a smaller val_size, or val_data")
        meta = dict(format=1, source={k: cfg[k] for k in PREPARE_KEYS}, encoder=encoder,
                    tokenizer=type(tok).__name__, tokenizer_fingerprint=tokenizer_fingerprint(tok),
                    vocab_size=len(tok), max_len=cfg['max_len'], dtype=np.dtype(dtype).name,
                    pad_id=tok.pad_token_id, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id, **counts)
        with open(os.path.join(tmp, 'meta.json'), 'w') as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        old = f"{out_dir}.old-{os.getpid()}"
        if os.path.exists(out_dir):
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        die(f"writing '{out_dir}' failed ({e.strerror or e}); nothing was replaced")
    finally:
        if pool is not None:
            pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    for s, c in counts.items():
        log(f"{out_dir}: {s} " + ', '.join(f"{v:,} {k.replace('_', ' ')}" for k, v in c.items()))
    return meta


def _chain(*tagged):
    for tag, docs in tagged:
        for d in docs:
            yield tag, d


def _tagged_batches(tagged, n):
    for batch in _batched(tagged, n):
        yield [t for t, _ in batch], [d for _, d in batch]


# -----------------------------------------------------------------------------
# reading prepared rows: what the trainers index


class Rows:
    """One split's rows (ids and lengths) of a prepared folder, read by index from the memory maps."""

    def __init__(self, folder, name, n, max_len, dtype):
        self.paths = (os.path.join(folder, f'{name}.bin'), os.path.join(folder, f'{name}_lens.bin'))
        self.n, self.max_len, self.dtype = n, max_len, np.dtype(dtype)
        for path, size in zip(self.paths, (n * max_len * self.dtype.itemsize, n * 2)):
            if not os.path.isfile(path) or os.path.getsize(path) != size:
                die(f"prepared data '{path}' is missing or has the wrong size (expected {size} bytes): prepare again")

    def __len__(self):
        return self.n

    def batch(self, idx):
        """ids (B, L) int64 and mask (B, L) bool of the rows idx (any order, repeats allowed)."""
        idx = np.asarray(idx, dtype=np.int64)
        # opened per batch, as nanoGPT does: a long-lived memmap's touched pages pile up in the RSS
        ids = np.memmap(self.paths[0], dtype=self.dtype, mode='r', shape=(self.n, self.max_len))[idx]
        lens = np.memmap(self.paths[1], dtype=np.uint16, mode='r', shape=(self.n,))[idx]
        ids = torch.from_numpy(ids.astype(np.int64))
        mask = torch.arange(self.max_len)[None] < torch.from_numpy(lens.astype(np.int64))[:, None]
        return ids, mask

    def used_tokens(self, vocab_size, chunk=65536):
        """The sorted distinct token ids of all rows (padding included), read chunk by chunk: bounded memory."""
        seen = np.zeros(vocab_size, dtype=bool)
        rows = np.memmap(self.paths[0], dtype=self.dtype, mode='r', shape=(self.n, self.max_len))
        for i in range(0, self.n, chunk):
            seen[np.unique(rows[i:i + chunk])] = True
        return np.flatnonzero(seen)


class Prepared:
    """A prepared folder: meta.json, train/val rows (and source rows for pairs), document offsets."""

    def __init__(self, folder):
        path = os.path.join(folder, 'meta.json')
        try:
            with open(path) as f:
                self.meta = json.load(f)
        except (OSError, ValueError) as e:
            die(f"prepared data '{folder}' has no readable meta.json ({e}): prepare it with data/prepare.py")
        if self.meta.get('format') != 1:
            die(f"prepared data '{folder}' has format {self.meta.get('format')!r}, this code reads format 1: prepare again")
        m, self.folder = self.meta, folder
        self.pairs = m['source']['pairs']
        self.train = Rows(folder, 'train', m['train']['rows'], m['max_len'], m['dtype'])
        self.val = Rows(folder, 'val', m['val']['rows'], m['max_len'], m['dtype'])
        if self.pairs:
            src_len = m['source']['src_max_len']
            self.train_src = Rows(folder, 'train_src', m['train']['rows'], src_len, m['dtype'])
            self.val_src = Rows(folder, 'val_src', m['val']['rows'], src_len, m['dtype'])

    def docs(self, split):
        """int64 (documents + 1,): the first row of each document of `split` ('train' or 'val'), and the end."""
        return np.fromfile(os.path.join(self.folder, f'{split}_docs.bin'), dtype=np.int64)

    def check(self, tokenizer, max_len, pairs=False, src_max_len=None):
        """Refuse, in one line, rows this model cannot read: another tokenizer, another L, pairs or not."""
        m, where = self.meta, f"prepared data '{self.folder}'"
        fp = tokenizer_fingerprint(tokenizer)
        if m['tokenizer_fingerprint'] != fp:
            die(f"{where} was tokenized by {m['encoder']}'s tokenizer ({m['tokenizer_fingerprint']}), "
                f"not this encoder's ({fp}): prepare it again with this encoder")
        if m['max_len'] != max_len:
            die(f"{where} has rows of L={m['max_len']} tokens, this model reads L={max_len}: prepare it with --max_len={max_len}")
        if self.pairs != pairs:
            die(f"{where} holds {'source/target pairs' if self.pairs else 'plain text'}, this run needs "
                f"{'pairs' if pairs else 'plain text'}")
        if pairs and m['source']['src_max_len'] != src_max_len:
            die(f"{where} has sources of {m['source']['src_max_len']} tokens, this run reads src_max_len={src_max_len}")
        return self


def open_data(cfg, tokenizer, tokenizer_path, encoder, max_len, env, log=print, pairs=False, src_max_len=0):
    """
    The Prepared data of a training run: cfg['data'] is a prepared folder, or a raw source spec that is
    prepared here, once, into out_dir/data/ (rank 0 writes it while the other ranks wait), in a folder
    named by everything that shapes the rows. Checked against the model's tokenizer and L either way.
    """
    spec = cfg['data']
    if os.path.isfile(os.path.join(spec, 'meta.json')):
        folder = spec
    else:
        keys = dict(PREPARE_DEFAULTS, **{k: cfg[k] for k in PREPARE_KEYS if k in cfg})
        keys.update(max_len=max_len, pairs=pairs, src_max_len=src_max_len)
        key = hashlib.sha1(json.dumps(dict(keys, tokenizer=tokenizer_fingerprint(tokenizer)),
                                      sort_keys=True).encode()).hexdigest()[:12]
        slug = re.sub(r'[^A-Za-z0-9]+', '_', os.path.basename(spec.rstrip('/')))[:40]
        folder = os.path.join(cfg['out_dir'], 'data', f'{slug}-{key}')
        if env['master'] and not os.path.isfile(os.path.join(folder, 'meta.json')):
            log(f"preparing '{spec}' into {folder} (once; data/prepare.py does this ahead of time)")
            prepare(dict(keys, data=spec), folder, encoder, tokenizer_path, log=log)
        if env['ddp']:
            torch.distributed.barrier()
    return Prepared(folder).check(tokenizer, max_len, pairs, src_max_len)
