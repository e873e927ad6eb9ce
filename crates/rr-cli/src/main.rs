//! `rr`: parse arguments, call the libraries, print results. Errors are one line on stderr
//! with a non-zero exit status; a panic is reported the same way, never as a backtrace.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rr_model::device::{parse_device, parse_dtype};
use rr_model::generate::{generate, GenerateOptions, Sampling};
use rr_model::{import, inspect, score, LlamaModel, Tokenizer};

#[derive(Parser)]
#[command(name = "rr", version, about = "Retrofitted recurrence: pretrained LMs that think deeper")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a checkpoint from another format into a Hugging Face model directory.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Teacher-forced mean negative log-likelihood and perplexity of a text file.
    Score(ScoreArgs),
    /// Generate a continuation of a prompt, streamed to stdout.
    Generate(GenerateArgs),
    /// Architecture, parameter counts, dtypes and tokenizer of a model directory.
    Inspect(InspectArgs),
}

#[derive(Subcommand)]
enum ImportCommand {
    /// A llama.cpp GGUF file (architecture `llama`).
    Gguf {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// A llama2.c checkpoint (`.bin`) with its tokenizer (`tokenizer.bin` or `tokenizer.json`).
    Llama2c {
        model: PathBuf,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// cpu, cuda, cuda:N or auto (CUDA when available).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Compute dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl ModelArgs {
    fn load(&self) -> Result<(LlamaModel, Tokenizer)> {
        let device = parse_device(&self.device)?;
        let dtype = parse_dtype(&self.dtype)?;
        let tokenizer = Tokenizer::from_path(&self.model)?;
        let model = LlamaModel::load(&self.model, device, dtype)?;
        Ok((model, tokenizer))
    }
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// UTF-8 text to score (BOS prepended as the tokenizer does).
    #[arg(long)]
    text_file: PathBuf,
    /// Window length in tokens (default: the model's context).
    #[arg(long)]
    window: Option<usize>,
    /// Score only the first N tokens of the text.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Greedy decoding (the default unless --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p"])]
    greedy: bool,
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the generated text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Recompute the whole sequence every step instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Args)]
struct InspectArgs {
    dir: PathBuf,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // A panic inside libtorch bindings is a bug, but the user still gets one line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let first = msg.lines().next().unwrap_or(msg);
        eprintln!("error: internal error: {first}");
    }));
    let cli = Cli::parse();
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            eprintln!("error: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::from(101),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Import(ImportCommand::Gguf { file, out }) => {
            let summary = import::gguf::import_gguf(&file, &out)?;
            println!("imported {} into {}: {summary:?}", file.display(), out.display());
        }
        Command::Import(ImportCommand::Llama2c { model, tokenizer, out }) => {
            let summary = import::llama2c::import_llama2c(&model, &tokenizer, &out)?;
            println!("imported {} into {}: {summary:?}", model.display(), out.display());
        }
        Command::Score(args) => run_score(args)?,
        Command::Generate(args) => run_generate(args)?,
        Command::Inspect(args) => {
            let report = inspect::inspect(&args.dir)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
        }
    }
    Ok(())
}

fn run_score(args: ScoreArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.text_file)
        .with_context(|| format!("{}: cannot read text", args.text_file.display()))?;
    if text.trim().is_empty() {
        bail!("{}: the text is empty", args.text_file.display());
    }
    let (model, tokenizer) = args.model.load()?;
    let mut ids = tokenizer.encode(&text, true)?;
    if let Some(max) = args.max_tokens {
        ids.truncate(max);
    }
    let context = model.config.max_position_embeddings;
    let window = args.window.unwrap_or(context);
    if window > context {
        bail!("--window {window} is longer than the model's context ({context})");
    }
    let result = score::score_ids(&model, &ids, window)
        .with_context(|| format!("scoring {}", args.text_file.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "{} tokens, mean NLL {:.4} nats/token, perplexity {:.3} (window {}, stride {})",
            result.tokens, result.mean_nll, result.perplexity, result.window, result.stride
        );
    }
    Ok(())
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let sampling = match (args.greedy, args.temperature) {
        (true, _) | (false, None) => {
            if args.top_p.is_some() {
                bail!("--top-p needs --temperature");
            }
            Sampling::Greedy
        }
        (false, Some(temperature)) => Sampling::TopP { temperature, top_p: args.top_p.unwrap_or(1.0) },
    };
    let (model, tokenizer) = args.model.load()?;
    let prompt = tokenizer.encode(&args.prompt, true)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        seed: args.seed,
        eos_ids: model.config.eos_token_ids(),
        stop_strings: args.stop,
        use_cache: !args.no_cache,
    };
    let mut stdout = std::io::stdout();
    print!("{}", args.prompt);
    stdout.flush().ok();
    generate(&model, Some(&tokenizer), &prompt, &options, |piece| {
        print!("{piece}");
        stdout.flush().ok();
    })?;
    println!();
    Ok(())
}
