//! `LayerKv::append` writes new keys/values into spare room in place instead of copying the
//! whole cache per token. These tests pin that this is invisible: the result is the plain
//! concatenation, views handed out earlier keep what they showed, and a copy of a layer's keys
//! (as the recurrent cache makes for a new core slot or a coda probe) and the layer it came from
//! never write into each other, also after the layer is cut back and rewritten (latest-m slots).
//! Values are copied, never computed, so equality is exact.

use rr_model::llama::LayerKv;
use tch::{Kind, Tensor};

/// [B = 2, n_kv = 3, t, D = 4] keys whose every element is distinct and names its position.
fn block(first: i64, t: i64) -> Tensor {
    Tensor::arange(2 * 3 * t * 4, (Kind::Float, tch::Device::Cpu))
        .view([2, 3, t, 4])
        .g_add_scalar(first as f64 * 1000.0)
}

fn copy_of(layer: &LayerKv) -> LayerKv {
    let mut copy = LayerKv::default();
    copy.kv = layer
        .kv
        .as_ref()
        .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()));
    copy
}

fn keys(layer: &LayerKv) -> Tensor {
    layer.kv.as_ref().expect("keys").0.copy()
}

#[test]
fn appending_token_by_token_is_concatenation_and_earlier_views_stay() {
    let mut layer = LayerKv::default();
    let mut expected = block(0, 7); // a prompt of 7 positions, then 600 single tokens
    let (k0, _) = layer.append(expected.shallow_clone(), block(0, 7).neg());
    let mut handed_out = vec![(k0, expected.copy())];
    for i in 1..=600 {
        let new = block(i, 1);
        let (k, v) = layer.append(new.shallow_clone(), new.neg());
        expected = Tensor::cat(&[&expected, &new], 2);
        assert!(k.equal(&expected), "keys after {i} tokens");
        assert!(v.equal(&expected.neg()), "values after {i} tokens");
        if i % 97 == 0 {
            handed_out.push((k, expected.copy()));
        }
    }
    // 607 positions crossed two reallocations of the room; every earlier view is intact.
    for (view, was) in &handed_out {
        assert!(
            view.equal(was),
            "a view of {} positions changed",
            was.size()[2]
        );
    }
}

#[test]
fn a_copy_and_its_source_never_write_into_each_other() {
    let mut source = LayerKv::default();
    let _ = source.append(block(0, 5), block(0, 5));
    let _ = source.append(block(1, 1), block(1, 1)); // now in room with spare positions
    let before = keys(&source);

    let mut copy = copy_of(&source);
    let _ = copy.append(block(2, 1), block(2, 1));
    assert!(
        keys(&source).equal(&before),
        "the copy's append changed the source"
    );

    let copied = keys(&copy);
    let _ = source.append(block(3, 1), block(3, 1));
    assert!(
        keys(&copy).equal(&copied),
        "the source's append changed the copy"
    );
    assert!(keys(&source).narrow(2, 6, 1).equal(&block(3, 1)));
}

#[test]
fn cutting_back_and_rewriting_leaves_shorter_copies_alone() {
    // The latest-m cache's pattern: a slot holds `past` positions, a copy of it is taken, the
    // slot gains this chunk's positions, is cut back to `past` and written again.
    let past = 6;
    let mut slot = LayerKv::default();
    let _ = slot.append(block(0, past), block(0, past));
    let _ = slot.append(block(1, 1), block(1, 1));
    let (k, v) = slot.kv.take().expect("keys");
    slot.kv = Some((k.narrow(2, 0, past), v.narrow(2, 0, past)));
    let copy = copy_of(&slot);
    let copied = keys(&copy);
    let _ = slot.append(block(1, 1), block(1, 1));
    let (k, v) = slot.kv.take().expect("keys");
    slot.kv = Some((k.narrow(2, 0, past), v.narrow(2, 0, past)));
    let (k, _) = slot.append(block(9, 1), block(9, 1));
    assert!(k.equal(&Tensor::cat(&[&block(0, past), &block(9, 1)], 2)));
    assert!(
        keys(&copy).equal(&copied),
        "rewriting the slot changed a copy of its first positions"
    );
}

#[test]
fn keys_replaced_from_outside_are_what_the_next_append_extends() {
    // `rows` restacks a layer's keys into new tensors of the same shape; the room behind the
    // old ones must not be written or read again.
    let mut layer = LayerKv::default();
    let _ = layer.append(block(0, 4), block(0, 4));
    let _ = layer.append(block(1, 1), block(1, 1));
    let replaced = block(5, 5).neg();
    layer.kv = Some((replaced.shallow_clone(), replaced.shallow_clone()));
    let (k, _) = layer.append(block(6, 1), block(6, 1));
    assert!(k.equal(&Tensor::cat(&[&replaced, &block(6, 1)], 2)));
}
