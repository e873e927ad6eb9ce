//! Untying a tied model's head (the authors' Llama-3.2 baseline): the head becomes its own
//! parameter, a copy of the embedding, so the logits are unchanged and the two train apart.

use rr_model::config::LlamaConfig;
use rr_model::llama::LlamaModel;
use tch::{nn, Device, Tensor};

#[test]
fn untied_head_is_a_separate_copy_of_the_embedding() {
    let config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 50,
        "max_position_embeddings": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10_000.0,
        "tie_word_embeddings": true,
    }))
    .unwrap();
    tch::manual_seed(1);
    let mut model = LlamaModel::new(nn::VarStore::new(Device::Cpu), config);
    tch::no_grad(|| {
        for (name, mut t) in model.named_tensors() {
            let _ = if name.contains("norm") {
                t.fill_(1.0)
            } else {
                t.normal_(0.0, 0.1)
            };
        }
    });
    assert!(!model
        .named_tensors()
        .iter()
        .any(|(n, _)| n == "lm_head.weight"));
    let ids = Tensor::from_slice(&[1i64, 7, 3, 49]).view([1, 4]);
    let tied_logits = model.forward(&ids, None);

    model.untie_head();
    assert!(!model.config.tie_word_embeddings);
    let vars = model.vs.variables();
    let head = &vars["lm_head.weight"];
    assert!(
        head.equal(&model.embed_tokens),
        "head = copy of the embedding"
    );
    assert!(model.forward(&ids, None).equal(&tied_logits));
    // Separate storage: changing the embedding leaves the head as it was.
    let before = head.copy();
    tch::no_grad(|| {
        let _ = model.embed_tokens.g_add_scalar_(1.0);
    });
    assert!(head.equal(&before));
    assert!(model.lm_head.equal(&before));
    // Untying twice changes nothing.
    model.untie_head();
    assert_eq!(model.named_tensors().len(), vars.len());
}
