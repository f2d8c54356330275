"""Random mutations of valid IR files: nothing but IRError ever escapes the reader."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from json_mutation import mutate, paths

from portable_moe.ir import IRError, from_json, to_dict
from portable_moe.models import build_model, build_moe_layer, preset

BASES = [to_dict(build_moe_layer(preset("debug"))), to_dict(build_moe_layer(preset("debug-deepseek"))),
         to_dict(build_model(preset("debug")))]

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
                 st.lists(st.integers(-3, 70), max_size=4),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(range(len(BASES))), data=st.data(),
       action=st.sampled_from(["replace", "delete", "duplicate"]), junk=JUNK)
def test_only_irerror_escapes(base, data, action, junk):
    obj = json.loads(json.dumps(BASES[base]))
    all_paths = list(paths(obj))
    path = data.draw(st.sampled_from(all_paths))
    mutated = mutate(obj, path, action, junk)
    try:
        text = json.dumps(mutated)
    except ValueError:
        return
    try:
        from_json(text)
    except IRError as e:
        assert str(e)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_bytes(blob):
    try:
        from_json(blob.decode("latin-1"))
    except IRError:
        pass
