"""
corpus.py: the embedded story generator and its checker, the local file loaders and their one-line
errors, the seeded hold-out split, and data/prepare_wordnet.py's parser. Pure Python, well under a second.
"""
import json
from pathlib import Path

import pytest

from corpus import is_valid_story, load_texts, split_off, stories, story_pairs, train_and_val

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
    # the 'stories' source: train and validation come from different seeds, train from `seed`
    assert load_texts('stories', 'train', n_stories=50, seed=1) == stories(50, seed=1)
    val = load_texts('stories', 'validation', n_stories=50, seed=1)
    assert len(val) == 50 and val != stories(50, seed=1) and all(map(is_valid_story, val))


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
# local files


def test_load_txt(tmp_path):
    p = tmp_path / 'a.txt'
    p.write_text("first line\n\n  \nsecond line\nthird\n", encoding='utf-8')
    assert load_texts(str(p)) == ['first line', 'second line', 'third']


def test_load_jsonl_text_field(tmp_path):
    p = tmp_path / 'a.jsonl'
    rows = [{'body': 'hello there', 'id': 1}, {'body': 'second', 'id': 2}]
    p.write_text('\n'.join(json.dumps(r) for r in rows) + '\n\n', encoding='utf-8')
    assert load_texts(str(p), text_field='body') == ['hello there', 'second']


def _one_line_exit(excinfo, *words):
    msg = str(excinfo.value)
    assert '\n' not in msg and msg.startswith('error:')
    for w in words:
        assert w in msg, (w, msg)


def test_load_errors_are_one_line(tmp_path):
    missing = tmp_path / 'nope.txt'
    with pytest.raises(SystemExit) as e:
        load_texts(str(missing))
    _one_line_exit(e, 'nope.txt', 'not found')

    empty = tmp_path / 'empty.txt'
    empty.write_text('\n  \n', encoding='utf-8')
    with pytest.raises(SystemExit) as e:
        load_texts(str(empty))
    _one_line_exit(e, 'empty.txt', 'no texts')

    nofield = tmp_path / 'b.jsonl'
    nofield.write_text(json.dumps({'text': 'ok'}) + '\n' + json.dumps({'title': 'x'}) + '\n', encoding='utf-8')
    with pytest.raises(SystemExit) as e:
        load_texts(str(nofield))
    _one_line_exit(e, 'b.jsonl:2', "'text'")

    badjson = tmp_path / 'c.jsonl'
    badjson.write_text('{"text": "ok"}\n{not json\n', encoding='utf-8')
    with pytest.raises(SystemExit) as e:
        load_texts(str(badjson))
    _one_line_exit(e, 'c.jsonl:2')

    other = tmp_path / 'd.csv'
    other.write_text('a,b\n', encoding='utf-8')
    with pytest.raises(SystemExit) as e:
        load_texts(str(other))
    _one_line_exit(e, 'd.csv')


# -----------------------------------------------------------------------------
# hold-out split


def test_split_off():
    texts = [f"text {i}" for i in range(100)]
    train, val = split_off(texts, 10, seed=0)
    assert len(train) == 90 and len(val) == 10
    assert sorted(train + val) == sorted(texts) and not set(train) & set(val)
    assert split_off(texts, 10, seed=0) == (train, val)            # deterministic for a seed
    assert split_off(texts, 10, seed=1)[1] != val                  # and the seed matters
    assert val != texts[-10:] and val != texts[:10]                # a shuffled choice, not a slice
    assert train == [t for t in texts if t in set(train)]          # original order kept
    with pytest.raises(SystemExit) as e:
        split_off(texts[:10], 10, seed=0)
    _one_line_exit(e, 'val_size')


def test_train_and_val(tmp_path):
    lines = [f'text number {i}' for i in range(10)]
    (tmp_path / 'a.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    (tmp_path / 'v.txt').write_text('held out one\nheld out two\nheld out three\n', encoding='utf-8')
    cfg = dict(data=str(tmp_path / 'a.txt'), val_data='', val_size=3, eval_size=2, text_field='text',
               n_stories=50, seed=0)
    train, val = train_and_val(cfg)  # held out of the data, then cut to eval_size
    assert len(train) == 7 and len(val) == 2 and not set(val) & set(train) and set(train) | set(val) <= set(lines)
    assert train_and_val(dict(cfg, val_data=str(tmp_path / 'v.txt'))) == (lines, ['held out one', 'held out two'])
    train, val = train_and_val(dict(cfg, data='stories'))  # the stories' own validation stream
    assert train == stories(50, seed=0) and val == load_texts('stories', 'validation', n_stories=3, seed=0)[:2]
    train, val = train_and_val(dict(cfg, data='stories'), pairs=True)
    assert train == story_pairs(50, seed=0) and len(val) == 2 and set(val[0]) == {'source', 'target'}


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
