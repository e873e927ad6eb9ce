//! Where the latent state starts (method.md §2): a truncated normal N(0, σ0²) cut at ±3σ0,
//! drawn on the device.
//!
//! Every value is a pure function of (seed, row key, token position, channel): a counter-based
//! hash gives a uniform number, and the inverse normal CDF maps it into the truncated normal
//! (the reference's `trunc_normal_`). There is no generator state, so a resumed run draws what
//! the uninterrupted one drew, and nothing goes through the host: at B=8, T=1024, h=2048 a host
//! draw would make 16.7M values per micro-batch on the CPU and copy 67 MB to the GPU.
//!
//! Keying by token position (not by index in the batch) is what makes inference reproducible:
//! a token gets the same initial state whatever its batch, its row, the padding before it, or
//! whether it comes through a KV cache.
//!
//! The hash works on 32-bit words held in int64 tensors, with multipliers below 2³¹ so that no
//! product overflows: the same integers on every device.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

/// Where the latent state starts.
#[derive(Debug)]
pub enum InitialState {
    /// Truncated normal keyed by (seed, position): the same for a token wherever it runs
    /// (evaluation and generation).
    Random {
        seed: u64,
    },
    /// Truncated normal keyed by (seed, row, position): every row of the batch its own draw,
    /// as the reference draws a fresh state per element in training. Row `i` of this batch is
    /// row `first_row + i` of the global batch (a data-parallel rank's shard starts there).
    RandomPerRow {
        seed: u64,
        first_row: i64,
    },
    Zeros,
    /// A given state [B, T, h].
    Given(Tensor),
    /// A given state per token position, [N, h]: the token at position p starts from row p,
    /// whatever its batch, window or cache (the state of `--initial-state FILE`).
    ByPosition(Tensor),
}

/// What a user asks the latent state to start from (`--initial-state random|zero|FILE`),
/// before a model gives it a width: [`crate::AnyModel::initial_state`] turns it into an
/// [`InitialState`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateChoice {
    /// The seeded truncated normal ([`InitialState::Random`]).
    #[default]
    Random,
    Zero,
    /// A safetensors file whose tensor `state` [N, h] gives position p row p.
    File(std::path::PathBuf),
}

impl StateChoice {
    /// `random`, `zero`, or a path.
    pub fn parse(text: &str) -> Self {
        match text {
            "random" => StateChoice::Random,
            "zero" => StateChoice::Zero,
            path => StateChoice::File(path.into()),
        }
    }
}

impl std::fmt::Display for StateChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateChoice::Random => f.write_str("random"),
            StateChoice::Zero => f.write_str("zero"),
            StateChoice::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A copy sharing the given tensor's storage.
impl Clone for InitialState {
    fn clone(&self) -> Self {
        match self {
            InitialState::Random { seed } => InitialState::Random { seed: *seed },
            InitialState::RandomPerRow { seed, first_row } => InitialState::RandomPerRow {
                seed: *seed,
                first_row: *first_row,
            },
            InitialState::Zeros => InitialState::Zeros,
            InitialState::Given(s) => InitialState::Given(s.shallow_clone()),
            InitialState::ByPosition(rows) => InitialState::ByPosition(rows.shallow_clone()),
        }
    }
}

impl InitialState {
    /// A per-position state from `path`, a safetensors file holding one tensor `state` of
    /// shape [N, h] (or [1, N, h]) for a model of width `h`: positions 0..N get its rows.
    pub fn from_file(path: &Path, h: usize) -> Result<Self> {
        let tensors = Tensor::read_safetensors(path)
            .with_context(|| format!("{}: cannot read the initial state", path.display()))?;
        let Some((_, state)) = tensors.into_iter().find(|(name, _)| name == "state") else {
            bail!("{}: no tensor named `state`", path.display());
        };
        let size = state.size();
        let rows = match size.as_slice() {
            [n, w] | [1, n, w] if *w == h as i64 && *n > 0 => state.view([*n, *w]),
            _ => bail!(
                "{}: `state` has shape {size:?}, expected [N, {h}] or [1, N, {h}]",
                path.display()
            ),
        };
        Ok(InitialState::ByPosition(rows.to_kind(Kind::Float)))
    }

    /// Positions a state covers: `None` for every position, `Some(n)` for 0..n.
    pub fn positions_covered(&self) -> Option<usize> {
        match self {
            InitialState::ByPosition(rows) => Some(rows.size()[0] as usize),
            _ => None,
        }
    }

    /// Whether the state is a random draw (not zeros, not given).
    pub fn is_drawn(&self) -> bool {
        matches!(
            self,
            InitialState::Random { .. } | InitialState::RandomPerRow { .. }
        )
    }

    /// The state for tokens at `positions` [B, T], shaped and typed like `like` [B, T, h].
    pub fn draw(&self, positions: &Tensor, like: &Tensor, std: f64) -> Tensor {
        match self {
            InitialState::Zeros => like.zeros_like().detach(),
            InitialState::Given(s) => s.to_device(like.device()).to_kind(like.kind()),
            InitialState::ByPosition(rows) => rows
                .to_device(like.device())
                .index_select(0, &positions.flatten(0, -1))
                .view(like.size().as_slice())
                .to_kind(like.kind()),
            InitialState::Random { seed } => {
                let rows = positions.zeros_like();
                truncated_normal(*seed, &rows, positions, like.size()[2], std).to_kind(like.kind())
            }
            InitialState::RandomPerRow { seed, first_row } => {
                let (b, t) = positions.size2().expect("positions are [B, T]");
                let rows = Tensor::arange_start(
                    *first_row,
                    first_row + b,
                    (Kind::Int64, positions.device()),
                )
                .view([b, 1])
                .expand([b, t], true);
                truncated_normal(*seed, &rows, positions, like.size()[2], std).to_kind(like.kind())
            }
        }
    }
}

const MASK32: i64 = 0xffff_ffff;

/// A 32-bit avalanche hash (two xor-shift-multiply rounds) of int64 tensors holding values
/// in [0, 2³²).
fn hash32(x: &Tensor) -> Tensor {
    let shift = |x: &Tensor, bits: i64| {
        x.bitwise_right_shift(&Tensor::scalar_tensor(bits, (Kind::Int64, x.device())))
    };
    let mut x = x.shallow_clone();
    for multiplier in [0x7feb_352d_i64, 0x68e3_1da5_i64] {
        x = x.bitwise_xor_tensor(&shift(&x, 16));
        x = (x * multiplier).bitwise_and(MASK32);
    }
    x.bitwise_xor_tensor(&shift(&x, 15))
}

/// Two independent 32-bit keys from the seed (its splitmix64 hash, low and high words).
fn keys(seed: u64) -> (i64, i64) {
    let z = rr_util::seed::splitmix64(seed);
    ((z & MASK32 as u64) as i64, (z >> 32) as i64)
}

/// fp32 values [B, T, h] on the device of `positions`, ~ N(0, std²) truncated to ±3·std;
/// element (b, t, c) is determined by (seed, rows[b, t], positions[b, t], c) alone.
pub fn truncated_normal(seed: u64, rows: &Tensor, positions: &Tensor, h: i64, std: f64) -> Tensor {
    let device = positions.device();
    let (k1, k2) = keys(seed);
    let word = |x: &Tensor| x.bitwise_and(MASK32).unsqueeze(-1);
    // A chain of bijective 32-bit hashes over (channel, position, row): each input changes
    // every later word.
    let channel = Tensor::arange(h, (Kind::Int64, device)).view([1, 1, h]);
    let x = hash32(&channel.bitwise_xor(k1));
    let x = hash32(&x.bitwise_xor_tensor(&word(positions)));
    let bits = hash32(&x.bitwise_xor_tensor(&word(rows)).bitwise_xor(k2));
    // The top 24 bits, centred in their bucket: a uniform number in (0, 1).
    let top = bits.bitwise_right_shift(&Tensor::scalar_tensor(8, (Kind::Int64, device)));
    let u = (top.to_kind(Kind::Float) + 0.5) / 16_777_216.0;
    // Inverse CDF of the normal restricted to [-3, 3]: Φ⁻¹(Φ(-3) + u·(1 - 2Φ(-3))).
    const PHI_MINUS_3: f64 = 0.001_349_898_031_630_094_6;
    let p = u * (1.0 - 2.0 * PHI_MINUS_3) + PHI_MINUS_3;
    let z = (p * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2;
    z * std
}

/// `truncated_normal` for positions `0..t` of `b` rows keyed by row, on `device`.
pub fn truncated_normal_rows(
    seed: u64,
    b: i64,
    t: i64,
    h: i64,
    std: f64,
    device: Device,
) -> Tensor {
    let positions = Tensor::arange(t, (Kind::Int64, device))
        .view([1, t])
        .expand([b, t], true);
    let like = Tensor::zeros([b, t, h], (Kind::Float, device));
    InitialState::RandomPerRow { seed, first_row: 0 }.draw(&positions, &like, std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_draws_the_rows_of_the_whole_batch_it_holds() {
        // A data-parallel rank holding rows 2..4 of a 4-row batch sees what a single process
        // holding all 4 rows sees there.
        let positions = Tensor::arange(5, (Kind::Int64, Device::Cpu))
            .view([1, 5])
            .expand([4, 5], true);
        let like = Tensor::zeros([4, 5, 8], (Kind::Float, Device::Cpu));
        let whole = InitialState::RandomPerRow {
            seed: 9,
            first_row: 0,
        }
        .draw(&positions, &like, 0.4);
        let shard = InitialState::RandomPerRow {
            seed: 9,
            first_row: 2,
        }
        .draw(&positions.narrow(0, 2, 2), &like.narrow(0, 2, 2), 0.4);
        assert!(shard.equal(&whole.narrow(0, 2, 2)));
        assert!(!shard.equal(&whole.narrow(0, 0, 2)));
    }

    fn stats(t: &Tensor) -> (f64, f64, f64) {
        let t = t.to_kind(Kind::Double);
        (
            f64::try_from(t.mean(Kind::Double)).unwrap(),
            f64::try_from(t.std(true)).unwrap(),
            f64::try_from(t.abs().max()).unwrap(),
        )
    }

    fn corr(a: &Tensor, b: &Tensor, sd: f64) -> f64 {
        f64::try_from((a.to_kind(Kind::Double) * b.to_kind(Kind::Double)).mean(Kind::Double))
            .unwrap()
            / (sd * sd)
    }

    /// The draw has the truncated normal's moments and mass, is a function of the seed only,
    /// and neighbouring channels, positions, rows and seeds are unrelated.
    #[test]
    fn is_a_seeded_truncated_normal() {
        let std = 0.02;
        let (b, t, h) = (4, 250, 1000);
        let a = truncated_normal_rows(7, b, t, h, std, Device::Cpu);
        let (mean, sd, max) = stats(&a);
        // 10^6 values: the mean's standard error is σ/1000; allow 3 of them.
        assert!(mean.abs() < 3.0 * std / 1000.0, "mean {mean}");
        // Truncation at ±3σ: sd = σ·sqrt(1 − 6φ(3)/(1 − 2Φ(−3))) = 0.98658·σ.
        assert!((sd / std - 0.98658).abs() < 2e-3, "sd ratio {}", sd / std);
        assert!(
            max <= 3.0 * std * (1.0 + 1e-6) && max > 2.9 * std,
            "max {max}"
        );
        // P(|z| < σ | |z| ≤ 3σ) = 0.68269 / 0.99730 = 0.68453.
        let inside =
            f64::try_from(a.abs().lt(std).to_kind(Kind::Double).mean(Kind::Double)).unwrap();
        assert!((inside - 0.68453).abs() < 2e-3, "{inside}");
        // Neighbouring channels, positions and rows are uncorrelated (|r| < 5 standard errors).
        let bound = 5.0 / (b as f64 * t as f64 * h as f64).sqrt() * 1.5;
        let c = corr(&a.narrow(2, 0, h - 1), &a.narrow(2, 1, h - 1), sd);
        assert!(c.abs() < bound, "channel lag-1 correlation {c}");
        let c = corr(&a.narrow(1, 0, t - 1), &a.narrow(1, 1, t - 1), sd);
        assert!(c.abs() < bound, "position lag-1 correlation {c}");
        let c = corr(&a.narrow(0, 0, b - 1), &a.narrow(0, 1, b - 1), sd);
        assert!(c.abs() < bound, "row lag-1 correlation {c}");

        assert!(a.equal(&truncated_normal_rows(7, b, t, h, std, Device::Cpu)));
        let other = truncated_normal_rows(8, b, t, h, std, Device::Cpu);
        let c = corr(&a, &other, sd);
        assert!(c.abs() < bound, "seeds 7 and 8 correlate: {c}");
    }

    /// `Random` depends on the position only: a row, a batch or a shift of the chunk does not
    /// change a token's state. `RandomPerRow` gives every row its own.
    #[test]
    fn random_is_keyed_by_position() {
        let std = 0.01;
        let like = Tensor::zeros([2, 5, 16], (Kind::Float, Device::Cpu));
        let positions = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0, 0, 0, 1, 2]).view([2, 5]);
        let s = InitialState::Random { seed: 3 }.draw(&positions, &like, std);
        // Row 1 positions 0, 1, 2 at columns 2, 3, 4 equal row 0's columns 0, 1, 2.
        assert!(s.get(1).narrow(0, 2, 3).equal(&s.get(0).narrow(0, 0, 3)));
        let alone = InitialState::Random { seed: 3 }.draw(
            &Tensor::from_slice(&[4i64]).view([1, 1]),
            &Tensor::zeros([1, 1, 16], (Kind::Float, Device::Cpu)),
            std,
        );
        assert!(alone.get(0).get(0).equal(&s.get(0).get(4)));
        let per_row = InitialState::RandomPerRow {
            seed: 3,
            first_row: 0,
        }
        .draw(&positions, &like, std);
        assert!(
            per_row.get(0).equal(&s.get(0)),
            "row 0 is keyed like Random"
        );
        assert!(!per_row
            .get(1)
            .narrow(0, 2, 3)
            .equal(&per_row.get(0).narrow(0, 0, 3)));
    }
}
