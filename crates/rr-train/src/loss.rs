//! Memory-lean cross-entropy: the head and the loss computed a chunk of tokens at a time.
//!
//! The plain loss materialises the logits [N, V] (in bf16 and again in fp32), the
//! log-softmax kept for backward and, during backward, the logits' gradient: at
//! Llama-3.2-1B's V = 128k and N = 8k tokens that is about 16 GB. Here no [N, V] tensor
//! exists beyond one chunk: for each chunk, under no-grad, the fp32 logits give the loss
//! terms and their gradient `softmax − onehot`, which is multiplied straight into the
//! gradients of the hidden states and of the head. A surrogate term then hands those two
//! gradients to autograd (its value is zero, its gradient exactly them), so `backward()`
//! propagates into the model as the plain loss would. Same loss, same gradients up to fp32
//! summation order (test).

use tch::{Kind, Tensor};

/// Rows per chunk so that one chunk's fp32 logits hold about 64M values (256 MB).
fn chunk_rows(vocab: i64) -> i64 {
    ((1i64 << 26) / vocab.max(1)).max(64)
}

/// Mean cross-entropy of `hidden` [N, h] · `head` [V, h]ᵀ against `labels` [N] (−100 =
/// ignored), as `cross_entropy_loss(logits.to_kind(Float), labels, Mean, ignore_index −100)`.
/// Returns a 0-d fp32 tensor whose value is the loss and whose backward gives `hidden` and
/// `head` the plain loss's gradients.
pub fn chunked_cross_entropy(hidden: &Tensor, head: &Tensor, labels: &Tensor) -> Tensor {
    chunked_cross_entropy_rows(hidden, head, labels, chunk_rows(head.size()[0]))
}

/// As [`chunked_cross_entropy`] with `rows` tokens per chunk.
fn chunked_cross_entropy_rows(
    hidden: &Tensor,
    head: &Tensor,
    labels: &Tensor,
    rows: i64,
) -> Tensor {
    let (n, _) = hidden.size2().expect("hidden must be [N, h]");
    let (loss, d_hidden, d_head) = tch::no_grad(|| {
        let h = hidden.detach();
        let w = head.detach().to_kind(Kind::Float);
        let valid = labels.ne(-100);
        // Mean over the labelled tokens, as PyTorch's Mean reduction with ignore_index.
        let count = valid.sum(Kind::Float);
        let mut loss = Tensor::zeros([], (Kind::Float, hidden.device()));
        let d_hidden = Tensor::zeros(h.size(), (Kind::Float, hidden.device()));
        let mut d_head = Tensor::zeros(w.size(), (Kind::Float, hidden.device()));
        let mut start = 0;
        while start < n {
            let len = rows.min(n - start);
            let hc = h.narrow(0, start, len).to_kind(Kind::Float);
            let labels_c = labels.narrow(0, start, len);
            let mask = valid
                .narrow(0, start, len)
                .to_kind(Kind::Float)
                .unsqueeze(1);
            let safe = labels_c.clamp_min(0).unsqueeze(1);
            let logits = hc.mm(&w.tr());
            let lse = logits.logsumexp([1], true);
            let picked = logits.gather(1, &safe, false);
            loss += ((&lse - picked) * &mask).sum(Kind::Float);
            // d loss_i / d logits_i = softmax_i − onehot(label_i), zero for ignored rows.
            let mut grad = logits - &lse;
            let _ = grad.exp_();
            let _ = grad.scatter_add_(1, &safe, &(-&mask));
            let _ = grad.g_mul_(&mask);
            d_hidden.narrow(0, start, len).copy_(&grad.mm(&w));
            d_head += grad.tr().mm(&hc);
            start += len;
        }
        (loss / &count, d_hidden / &count, d_head / &count)
    });
    // value: loss + (s − s) = loss; gradient: d_hidden for hidden, d_head for head.
    let surrogate = (hidden.to_kind(Kind::Float) * d_hidden).sum(Kind::Float)
        + (head.to_kind(Kind::Float) * d_head).sum(Kind::Float);
    loss + (&surrogate - surrogate.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Reduction};

    /// Loss and gradients equal the plain cross-entropy on the full logits, with ignored
    /// labels, in one chunk or several.
    #[test]
    fn equals_the_plain_loss_and_gradients() {
        tch::manual_seed(5);
        let (n, h, v) = (300i64, 16i64, 5_000i64);
        let hidden = Tensor::randn([n, h], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let head =
            (Tensor::randn([v, h], (Kind::Float, Device::Cpu)) * 0.3).set_requires_grad(true);
        let labels = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
        let _ = labels.narrow(0, 10, 5).fill_(-100);
        let _ = labels.narrow(0, 290, 3).fill_(-100);

        let plain = hidden.mm(&head.tr()).cross_entropy_loss::<Tensor>(
            &labels,
            None,
            Reduction::Mean,
            -100,
            0.0,
        );
        let g_plain = Tensor::run_backward(&[&plain], &[&hidden, &head], false, false);
        let diff = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        let max = |a: &Tensor| f64::try_from(a.abs().max()).unwrap();
        // Bounds for fp32 sums in another order (chunks change the blocking and the order of
        // the sums over rows): a length-K sum moves by at most K·ε·(its largest partial sum)
        // (docs/TESTING.md). Loss: logits (K = h) move it twice over, the log-sum-exp (K = v)
        // by K·ε absolutely, the sum over rows (K = n) by n·ε·loss. d_hidden = (p − y)·W / n
        // sums over v, partial sums ≤ max|W|; d_head = (p − y)ᵀ·hidden / n over n, ≤ max|hidden|.
        let eps = f64::from(f32::EPSILON);
        let valid = (n - 8) as f64;
        let logits = max(&hidden.mm(&head.tr())).max(1.0);
        let loss_bound = eps * (2.0 * h as f64 * logits + v as f64 + n as f64 * max(&plain));
        let dh_bound = eps * v as f64 * max(&head) * 2.0 / valid;
        let dw_bound = eps * n as f64 * max(&hidden) * 2.0 / valid;
        // One chunk (the default at this vocabulary), five chunks, and a last chunk of one row.
        for rows in [chunk_rows(v), 64, 299] {
            let lean = chunked_cross_entropy_rows(&hidden, &head, &labels, rows);
            let g = Tensor::run_backward(&[&lean], &[&hidden, &head], false, false);
            let dl = diff(&plain, &lean);
            let (dh, dw) = (diff(&g_plain[0], &g[0]), diff(&g_plain[1], &g[1]));
            eprintln!(
                "{rows} rows a chunk: |Δloss| {dl:.1e} (bound {loss_bound:.1e}), \
                 |Δd_hidden| {dh:.1e} ({dh_bound:.1e}), |Δd_head| {dw:.1e} ({dw_bound:.1e})"
            );
            assert!(dl <= loss_bound, "{rows}: {plain:?} vs {lean:?}");
            assert!(
                dh <= dh_bound && dw <= dw_bound,
                "{rows}: gradients differ by {dh}, {dw}"
            );
            // Ignored rows get no gradient at all.
            assert_eq!(
                f64::try_from(g[0].narrow(0, 10, 5).abs().max()).unwrap(),
                0.0
            );
            assert!(f64::try_from(g[0].abs().max()).unwrap() > 1e-4);
        }
    }
}
