//! Chat prompts from the model's own template: `chat_template` of `tokenizer_config.json`
//! (a Jinja template, as Hugging Face's `apply_chat_template` renders it), with `messages`,
//! `add_generation_prompt = true`, `bos_token` and `eos_token`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A special token of `tokenizer_config.json`: a string or `{"content": ...}`.
fn special_token(config: &serde_json::Value, key: &str) -> String {
    match &config[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The template of the model directory `dir`; None when it has none.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer_config.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        let source = match &config["chat_template"] {
            serde_json::Value::String(s) => s.clone(),
            // A list of named templates: the one named "default".
            serde_json::Value::Array(list) => match list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
            {
                Some(s) => s.to_string(),
                None => bail!("{}: chat_template has no \"default\" entry", path.display()),
            },
            serde_json::Value::Null => return Ok(None),
            _ => bail!(
                "{}: chat_template is neither a string nor a list",
                path.display()
            ),
        };
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source)
            .with_context(|| format!("{}: invalid chat_template", path.display()))?;
        Ok(Some(Self {
            env,
            bos_token: special_token(&config, "bos_token"),
            eos_token: special_token(&config, "eos_token"),
        }))
    }

    /// The prompt text for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let template = self.env.get_template("chat")?;
        let text = template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| anyhow::anyhow!("the chat template failed: {e}"))?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "chat_template": source,
            "bos_token": {"content": "<s>"},
            "eos_token": "</s>",
        });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap()
    }

    fn messages() -> Vec<Message> {
        vec![
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message {
                role: "user".into(),
                content: "Hi".into(),
            },
        ]
    }

    #[test]
    fn renders_a_chatml_template_with_the_generation_prompt() {
        // ChatML, as SmolLM2-Instruct's tokenizer_config.json writes it.
        let t = template(
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        );
        assert_eq!(
            t.render(&messages()).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let t = template("{{ bos_token }}{{ messages[1]['content'] }}{{ eos_token }}");
        assert_eq!(t.render(&messages()).unwrap(), "<s>Hi</s>");
    }

    #[test]
    fn raise_exception_is_an_error_and_no_template_is_none() {
        let t = template("{{ raise_exception('roles must alternate') }}");
        let error = t.render(&messages()).unwrap_err().to_string();
        assert!(error.contains("roles must alternate"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::from_model_dir(dir.path()).unwrap().is_none());
    }
}
