//! The OpenAI request bodies rr understands, and their checks: every field a client may get
//! wrong is refused here, with a message naming it, before anything reaches the engine.

use serde::Deserialize;

use rr_model::{CacheMode, DecodeOptions, ExitCriterion, Sampling, TestTime};

use crate::chat::Message;
use crate::engine::ModelInfo;

/// A string or a list of strings (OpenAI's `prompt` and `stop`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The fields both endpoints share: OpenAI's sampling fields and rr's depth fields.
#[derive(Debug, Default, Deserialize)]
pub struct Settings {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    /// The chat endpoint's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Recurrent models: the core's recurrence (the maximum with `exit_kl`).
    pub recurrence: Option<i64>,
    /// Recurrent models: per-token exit once the KL between successive iterations' next-token
    /// distributions is below this.
    pub exit_kl: Option<f64>,
    /// With `exit_kl`: iterations every token runs at least.
    pub min_steps: Option<i64>,
    /// Recurrent models: keep only the latest m iterations' keys/values per core layer.
    pub latest_m: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub settings: Settings,
}

/// OpenAI's default `max_tokens` for completions; chat answers may fill the server's limit.
pub const COMPLETION_DEFAULT_MAX_TOKENS: usize = 16;

/// The server's limits that requests are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_tokens` at most.
    pub max_tokens: usize,
}

fn positive(name: &str, value: i64) -> Result<usize, String> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| format!("`{name}` must be at least 1 (got {value})"))
}

impl Settings {
    /// The decoding settings for a prompt of `prompt_len` tokens; `default_max_tokens` None
    /// means as many as the limit and the context allow.
    pub fn decode_options(
        &self,
        info: &ModelInfo,
        limits: Limits,
        prompt_len: usize,
        default_max_tokens: Option<usize>,
    ) -> Result<DecodeOptions, String> {
        if prompt_len == 0 {
            return Err("the prompt is empty".into());
        }
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(format!("`n` must be 1 (got {n})"));
        }
        let room = info.max_context.saturating_sub(prompt_len);
        if room == 0 {
            return Err(format!(
                "the prompt has {prompt_len} tokens; the model's context is {}",
                info.max_context
            ));
        }
        let max_new_tokens = match self.max_tokens.or(self.max_completion_tokens) {
            Some(m) => positive("max_tokens", m)?,
            None => default_max_tokens.unwrap_or(limits.max_tokens.min(room)),
        };
        if max_new_tokens > limits.max_tokens {
            return Err(format!(
                "`max_tokens` {max_new_tokens} is over this server's limit of {}",
                limits.max_tokens
            ));
        }
        if max_new_tokens > room {
            return Err(format!(
                "a prompt of {prompt_len} tokens and `max_tokens` {max_new_tokens} do not fit \
                 the model's context of {}",
                info.max_context
            ));
        }
        let seed = self.seed.unwrap_or(0);
        let (test_time, exit, cache_mode) = self.depth(info, seed)?;
        Ok(DecodeOptions {
            max_new_tokens,
            sampling: self.sampling()?,
            seed,
            eos_ids: info.eos_ids.clone(),
            stop_strings: self.stop_strings()?,
            test_time,
            exit,
            cache_mode,
            ..DecodeOptions::default()
        })
    }

    /// OpenAI's semantics: temperature 1 unless given, 0 is greedy.
    fn sampling(&self) -> Result<Sampling, String> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(format!(
                "`temperature` must be in [0, 2] (got {temperature})"
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(format!("`top_p` must be in (0, 1] (got {top_p})"));
        }
        Ok(if temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::TopP { temperature, top_p }
        })
    }

    fn stop_strings(&self) -> Result<Vec<String>, String> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s.clone()],
            Some(OneOrMany::Many(list)) => list.clone(),
        };
        if stops.len() > 4 {
            return Err(format!(
                "`stop` takes at most 4 strings (got {})",
                stops.len()
            ));
        }
        if stops.iter().any(String::is_empty) {
            return Err("`stop` strings must not be empty".into());
        }
        Ok(stops)
    }

    /// Recurrence, exit rule and cache mode; static models accept none of rr's fields.
    fn depth(
        &self,
        info: &ModelInfo,
        seed: u64,
    ) -> Result<(TestTime, Option<ExitCriterion>, CacheMode), String> {
        let rr_fields = self.recurrence.is_some()
            || self.exit_kl.is_some()
            || self.min_steps.is_some()
            || self.latest_m.is_some();
        if !info.recurrent && rr_fields {
            return Err(
                "`recurrence`, `exit_kl`, `min_steps` and `latest_m` apply only to recurrent \
                 models; this one is not"
                    .into(),
            );
        }
        let recurrence = match self.recurrence {
            Some(r) => positive("recurrence", r)?,
            None => info.default_recurrence,
        };
        if recurrence > rr_model::recurrent::MAX_RECURRENCE {
            return Err(format!(
                "`recurrence` {recurrence} is beyond the supported {}",
                rr_model::recurrent::MAX_RECURRENCE
            ));
        }
        let min_steps = match self.min_steps {
            Some(_) if self.exit_kl.is_none() => {
                return Err("`min_steps` needs `exit_kl`".into());
            }
            Some(m) => positive("min_steps", m)?,
            None => 1,
        };
        if min_steps > recurrence {
            return Err(format!(
                "`min_steps` {min_steps} is over the recurrence {recurrence}"
            ));
        }
        let exit = match self.exit_kl {
            Some(kl) if !(kl.is_finite() && kl >= 0.0) => {
                return Err(format!("`exit_kl` must be a finite number >= 0 (got {kl})"));
            }
            Some(threshold) => Some(ExitCriterion {
                threshold,
                min_steps,
                max_steps: recurrence,
            }),
            None => None,
        };
        let cache_mode = match self.latest_m {
            Some(m) => CacheMode::LatestM(positive("latest_m", m)?),
            None => CacheMode::Full,
        };
        Ok((TestTime { recurrence, seed }, exit, cache_mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recurrent() -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            recurrent: true,
            default_recurrence: 4,
            max_context: 100,
            eos_ids: vec![2],
        }
    }

    const LIMITS: Limits = Limits { max_tokens: 50 };

    fn options(json: &str, info: &ModelInfo, prompt_len: usize) -> Result<DecodeOptions, String> {
        let settings: Settings = serde_json::from_str(json).unwrap();
        settings.decode_options(info, LIMITS, prompt_len, Some(16))
    }

    #[test]
    fn openai_defaults_and_rr_depth_fields() {
        let o = options("{}", &recurrent(), 10).unwrap();
        assert_eq!(o.max_new_tokens, 16);
        assert_eq!(
            o.sampling,
            Sampling::TopP {
                temperature: 1.0,
                top_p: 1.0
            }
        );
        assert_eq!(o.test_time.recurrence, 4);
        assert_eq!(o.eos_ids, vec![2]);
        let o = options(
            r#"{"temperature": 0, "recurrence": 9, "exit_kl": 0.01, "min_steps": 2, "latest_m": 3, "seed": 5, "stop": "x"}"#,
            &recurrent(),
            10,
        )
        .unwrap();
        assert_eq!(o.sampling, Sampling::Greedy);
        assert_eq!(
            o.exit,
            Some(ExitCriterion {
                threshold: 0.01,
                min_steps: 2,
                max_steps: 9
            })
        );
        assert_eq!(o.cache_mode, CacheMode::LatestM(3));
        assert_eq!((o.seed, o.test_time.seed), (5, 5));
        assert_eq!(o.stop_strings, vec!["x".to_string()]);
    }

    #[test]
    fn bad_values_name_their_field() {
        let static_model = ModelInfo {
            recurrent: false,
            default_recurrence: 1,
            ..recurrent()
        };
        for (json, prompt_len, field) in [
            (r#"{"recurrence": -3}"#, 10, "recurrence"),
            (r#"{"recurrence": 2000}"#, 10, "recurrence"),
            (r#"{"max_tokens": 51}"#, 10, "max_tokens"),
            (r#"{"max_tokens": 40}"#, 70, "context"),
            (r#"{}"#, 100, "context"),
            (r#"{"exit_kl": -1}"#, 10, "exit_kl"),
            (r#"{"exit_kl": 0.1, "min_steps": 5}"#, 10, "min_steps"),
            (r#"{"temperature": 2.5}"#, 10, "temperature"),
            (r#"{"top_p": 1.5}"#, 10, "top_p"),
            (r#"{"n": 3}"#, 10, "`n`"),
            (r#"{"stop": ["a", ""]}"#, 10, "stop"),
        ] {
            let error = options(json, &recurrent(), prompt_len).unwrap_err();
            assert!(error.contains(field), "{json}: {error}");
        }
        let error = options(r#"{"latest_m": 2}"#, &static_model, 10).unwrap_err();
        assert!(error.contains("only to recurrent models"), "{error}");
        assert!(options("{}", &static_model, 10).is_ok());
    }
}
