//! `rr`: parse arguments, call the libraries, print results. Errors, usage errors included, are
//! one line on stderr with exit status 1; a panic is reported the same way, never as a
//! backtrace.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rr_data::InputFormat;
use rr_eval::tasks::Task;
use rr_import as import;
use rr_model::device::parse_device;
use rr_model::recurrent::StateChoice;
use rr_model::{
    decode, inspect, AnyModel, CacheMode, DecodeOptions, ExitCriterion, Sampling, TestTime,
    TokenStep, Tokenizer,
};
use tch::{Device, Kind};

#[derive(Parser)]
#[command(
    name = "rr",
    version,
    about = "Retrofitted recurrence: pretrained LMs that think deeper"
)]
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
    /// Turn a pretrained model into a recurrent one: prelude / recurrent core / coda.
    Surgery(SurgeryArgs),
    /// Make training data: pack tokenised text, or generate synthetic math problems.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train a recurrent model (or a static baseline) from a TOML recipe.
    Train(TrainArgs),
    /// Evaluate a model on tasks at several test recurrences.
    Eval(EvalArgs),
    /// A markdown report with plots comparing a run with its static baseline.
    Report(ReportArgs),
    /// Benchmarks (`cargo xtask bench-recurrence` runs these and the PyTorch reference).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write a model or checkpoint in a form other tools open as it is.
    #[command(subcommand)]
    Export(ExportCommand),
    /// An OpenAI-compatible HTTP server (completions, chat, streaming) with per-request
    /// recurrence and adaptive exit, batching requests of any depth together.
    Serve(ServeArgs),
    /// `rr serve` under 1, 4, 16, 64 concurrent clients against sequential `rr generate`:
    /// total tokens/s, p50/p99 latency, `serve.json` and a plot (`cargo xtask bench-serve`
    /// and the GPU bundle run this).
    BenchServe(BenchServeArgs),
}

#[derive(Subcommand)]
enum ExportCommand {
    /// A clean Hugging Face folder: config, model.safetensors (F32), tokenizer files, the
    /// Python modelling files of a recurrent model, and a README.md model card.
    Hf {
        /// A model directory, surgery output or trainer checkpoint (`RUN/checkpoints/step-N`).
        dir: PathBuf,
        /// The new directory.
        #[arg(long)]
        out: PathBuf,
        /// An `rr eval` result (JSON) whose table goes into the model card.
        #[arg(long)]
        eval: Option<PathBuf>,
    },
}

/// Compute dtype.
#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    #[value(alias = "fp32", alias = "float32")]
    F32,
    #[value(alias = "bfloat16")]
    Bf16,
}

impl Dtype {
    fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// `rr generate --cuda-graphs`.
#[derive(Clone, Copy, ValueEnum)]
enum CudaGraphs {
    /// On where it applies: a recurrent model on CUDA at a fixed recurrence with the cache.
    Auto,
    On,
    Off,
}

/// How the surgery's adapter starts.
#[derive(Clone, Copy, ValueEnum)]
enum Adapter {
    /// PyTorch's default for a Linear layer, U(−1/√(2h), 1/√(2h)), seeded by --seed.
    Default,
    /// `[0 | I]`: the first iteration passes the prelude output straight into the core.
    Identity,
}

/// How surgery chooses which source layers to keep.
#[derive(Clone, Copy, ValueEnum)]
enum Select {
    /// Keep the most influential layers (block influence on --calibration, ShortGPT's rule).
    Influence,
}

/// Where the recurrent model's weights come from.
#[derive(Clone, Copy, ValueEnum)]
enum WeightsFrom {
    /// The source model's layers, embeddings and head.
    Pretrained,
    /// Fresh weights of the same shapes (Huginn's takase init), seeded by --seed.
    Random,
}

/// A benchmark model shape.
#[derive(Clone, Copy, ValueEnum)]
enum ShapeName {
    Tiny,
    Smollm2,
    Tinyllama,
    #[value(name = "llama3.2-1b")]
    Llama32_1b,
}

/// Layer indices and inclusive ranges, `0-3,6`: a selection in the order the layers run.
#[derive(Clone)]
struct LayerList(Vec<usize>);

fn layer_list(text: &str) -> Result<LayerList> {
    rr_surgery::parse_indices(text).map(LayerList)
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
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Compute dtype.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Recurrent models: iterations of the core (default: the config's mean_recurrence).
    #[arg(long)]
    recurrence: Option<usize>,
    /// Seed of the initial latent state (recurrent models) and of sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl ModelArgs {
    fn load(&self) -> Result<(AnyModel, Tokenizer)> {
        let tokenizer = Tokenizer::from_path(&self.model)?;
        let model = AnyModel::load(&self.model, self.device, self.dtype.kind())?;
        Ok((model, tokenizer))
    }

    /// The recurrence (`--recurrence`, else what the model was trained for) and state seed.
    fn test_time(&self, model: &AnyModel) -> Result<TestTime> {
        let recurrence = model
            .recurrence(self.recurrence)
            .with_context(|| self.model.display().to_string())?;
        Ok(TestTime {
            recurrence,
            seed: self.seed,
        })
    }
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// UTF-8 text to score (BOS prepended as the tokenizer does; at most 256 MiB).
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
    /// Recurrent models: where the latent state starts: `random` (seeded by --seed), `zero`,
    /// or a safetensors file whose tensor `state` [N, h] gives position p row p.
    #[arg(long, default_value = "random", value_parser = state_arg)]
    initial_state: StateChoice,
    /// Write the logits of the text (one forward pass, which must fit the context) to this
    /// safetensors file: `logits` [T, vocab] f32, `input_ids` [T] and `nll` [T-1] (nats).
    #[arg(long)]
    dump_logits: Option<PathBuf>,
}

/// `--initial-state`: a random draw, zeros, or a file.
fn state_arg(text: &str) -> Result<StateChoice> {
    Ok(StateChoice::parse(text))
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    /// New tokens at most; prompt and new tokens must fit the model's context.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Greedy decoding (the default unless --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p"])]
    greedy: bool,
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_p: Option<f64>,
    /// Stop when the generated text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Recompute the whole sequence every step instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
    /// Recurrent models: stop iterating a token once the KL divergence between successive
    /// next-token distributions is below this (e.g. 1e-3); --recurrence is then the maximum.
    #[arg(long)]
    exit_kl: Option<f64>,
    /// With --exit-kl: iterations every token runs at least.
    #[arg(long, default_value_t = 1)]
    min_steps: usize,
    /// Recurrent models: keep only the latest M iterations' keys/values per core layer.
    #[arg(long)]
    latest_m: Option<usize>,
    /// Recurrent models: start each new token's state from the previous token's final state.
    #[arg(long)]
    warm_start: bool,
    /// Recurrent models: where the latent state starts: `random` (seeded by --seed), `zero`,
    /// or a safetensors file whose tensor `state` [N, h] gives position p row p.
    #[arg(long, default_value = "random", value_parser = state_arg)]
    initial_state: StateChoice,
    /// Recurrent models: run each new token as the replay of one CUDA graph of the
    /// fixed-shape decode step, captured after the prompt.
    #[arg(long, value_enum, default_value = "auto")]
    cuda_graphs: CudaGraphs,
}

#[derive(Args)]
struct ServeArgs {
    /// Model directory (config.json, safetensors, tokenizer.json; tokenizer_config.json's
    /// chat_template for /v1/chat/completions).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the address is printed on stderr).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// cpu, cuda, cuda:N or auto (CUDA when available).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Compute dtype.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Requests decoded together at most (the running batch).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests waiting at most; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// The most `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Seconds from a request's arrival to its last token; later it is answered 408.
    #[arg(long, default_value_t = 300.0)]
    request_timeout: f64,
}

#[derive(Args)]
struct BenchServeArgs {
    #[arg(long)]
    model: PathBuf,
    /// cpu, cuda or auto (handed to `rr generate` and `rr serve`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Concurrent clients, one level each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// New tokens per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Output folder for serve.json and serve_tokens_per_s.svg.
    #[arg(long, default_value = "runs/bench-serve")]
    out: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    dir: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SurgeryArgs {
    /// Source model directory (Hugging Face Llama or OLMo-2 layout).
    #[arg(long)]
    model: PathBuf,
    /// The paper's split P,B,C: first P layers, the B layers before the coda, last C layers.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["prelude", "core", "coda"])]
    layers: Option<Vec<usize>>,
    /// Explicit prelude layers, e.g. `0-3` (with --core and --coda).
    #[arg(long, value_parser = layer_list)]
    prelude: Option<LayerList>,
    /// Explicit core layers in the order they run; repeats allowed, e.g. `10-17` or `0-21`.
    #[arg(long, value_parser = layer_list)]
    core: Option<LayerList>,
    /// Explicit coda layers, e.g. `18-21`.
    #[arg(long, value_parser = layer_list)]
    coda: Option<LayerList>,
    /// Adapter initialisation.
    #[arg(long, value_enum, default_value = "default")]
    adapter: Adapter,
    /// Seed of the adapter draw (with --init random, of every weight).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Choose which layers fill the --layers P,B,C sizes instead of the paper's rule.
    #[arg(long, value_enum, requires = "calibration")]
    select: Option<Select>,
    /// Plain text file the source model runs on to rank its layers (--select influence).
    #[arg(long, requires = "select")]
    calibration: Option<PathBuf>,
    /// Calibration tokens: the first N tokens of the text, in windows of 256.
    #[arg(long, default_value_t = 4096, requires = "select")]
    calibration_tokens: usize,
    /// Weights: the source's (a retrofit) or fresh ones of the same shapes (from scratch).
    #[arg(long, value_enum, default_value = "pretrained")]
    init: WeightsFrom,
    /// Mean (training and default test) recurrence written to the config.
    #[arg(long, default_value_t = 4)]
    mean_recurrence: usize,
    #[arg(long)]
    out: PathBuf,
    /// Print the plan only; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Tokenise documents and pack them into rows of T+1 tokens (train and held-out splits).
    Pack {
        /// Model directory or tokenizer.json.
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// text, jsonl, gsm8k, gsm8k-rr (as the `synth` and `gsm8k_rr` prompts continue) or math.
        #[arg(long)]
        format: InputFormat,
        #[arg(long)]
        seq_len: usize,
        #[arg(long)]
        out: PathBuf,
        /// Fraction of documents held out.
        #[arg(long, default_value_t = rr_data::DEFAULT_HELDOUT_FRACTION)]
        heldout_fraction: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Multi-step arithmetic word problems with step-by-step solutions (GSM8K format).
    SynthMath {
        #[arg(long)]
        problems: usize,
        #[arg(long)]
        max_steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// The recipe (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Run directory (default: runs/<name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue from the newest intact checkpoint.
    #[arg(long)]
    resume: bool,
    /// With --resume: accept a changed config. Without: start over in an existing run directory.
    #[arg(long)]
    force: bool,
    /// Train the recipe's static baseline (the `[baseline]` source model, the recipe's optimizer
    /// and steps unless `[baseline]` says otherwise, no curriculum).
    #[arg(long)]
    baseline: bool,
    /// Train the recipe's from-scratch control (`[prepare] control`: the retrofit's shape with
    /// fresh weights) with the recipe's own settings.
    #[arg(long, conflicts_with = "baseline")]
    control: bool,
    /// Set the number of steps so the FLOPs equal those of this finished run.
    #[arg(long)]
    match_flops: Option<PathBuf>,
    /// Data-parallel on this machine: start N ranks of this command (as torchrun
    /// --nproc-per-node N; multi-node jobs set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Data-parallel runs: seconds a collective waits for the other ranks before this rank
    /// stops (a rank that died or hung).
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    collective_timeout: u64,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tasks: gsm8k (the authors' gsm8k_cot_sean), gsm8k_rr (rr's earlier GSM8K prompt), math
    /// (minerva_math, 5,000 problems), math500, arc_easy, arc_challenge, openbookqa, piqa,
    /// winogrande, hellaswag (10,042 items), hellaswag_1000, synth. Scored with BOS first, as
    /// lm-evaluation-harness with add_bos_token=True.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<Task>,
    /// Test recurrences (recurrent models).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    recurrences: Vec<usize>,
    /// Evaluate the first N items of each task.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Data directory (default: $RR_SHARED_DATA, else ../shared/data); for `synth`, the JSONL file.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The static baseline, drawn as a flat line in the plots: a model directory (evaluated on
    /// the same tasks, its results written beside --out as *.baseline.json) or the
    /// results.json of an earlier `rr eval` of it.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Held-out loss and perplexity at each recurrence: a text file, or a packed directory
    /// (its held-out split).
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// With a packed --heldout: rows to use.
    #[arg(long, default_value_t = 64)]
    heldout_rows: usize,
    /// Also write every item's log-likelihoods or generated text to `<out>.samples.jsonl`
    /// (lm-evaluation-harness's --log_samples).
    #[arg(long)]
    log_samples: bool,
    /// Recurrent models: where the latent state starts: `random` (seeded by --seed), `zero`,
    /// or a safetensors file whose tensor `state` [N, h] gives position p row p (it must
    /// cover every item's length). The static --baseline ignores it.
    #[arg(long, default_value = "random", value_parser = state_arg)]
    initial_state: StateChoice,
    #[arg(long, default_value = "results.json")]
    out: PathBuf,
}

#[derive(Args)]
struct ReportArgs {
    run_dir: PathBuf,
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Output directory (default: the run's parent directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// `rr eval` results of the run (task accuracy by test recurrence) to include.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// The from-scratch control's run (`rr train --control`): with --eval and --control-eval,
    /// adds the retrofit, the control and the baseline side by side, with the accuracy per
    /// difficulty of `rr eval --tasks synth` against test recurrence.
    #[arg(long, requires_all = ["eval", "control_eval"])]
    control: Option<PathBuf>,
    /// `rr eval` results of the control.
    #[arg(long, requires = "control")]
    control_eval: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time training steps, no-grad forwards and cached generation at each recurrence on
    /// random weights of a real model's shape; writes a JSON result.
    Recurrence(BenchArgs),
    /// Merge an rr result with PyTorch reference rows into results.json, results.md and plots.
    Report {
        /// `rr bench recurrence` output.
        rr: PathBuf,
        /// `bench/recurrent_ref.py` output.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    #[arg(long, value_enum, default_value = "tiny")]
    shape: ShapeName,
    /// Layers (prelude, core, coda), e.g. 4,8,4 (default: the shape's).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    recurrences: Vec<usize>,
    /// Iterations with gradient for training points (each paired with every r >= k).
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    backprop: Vec<usize>,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Compute dtype (default: bf16 on CUDA, f32 on CPU).
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    #[arg(long, default_value_t = 16)]
    gen_prompt: usize,
    #[arg(long, default_value_t = 16)]
    gen_tokens: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    out: PathBuf,
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("{}", usage_error_line(&e.to_string()));
            return ExitCode::FAILURE;
        }
    };
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            eprintln!("error: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::from(101),
    }
}

/// clap's message on one line: what it says before the usage lines, joined.
fn usage_error_line(text: &str) -> String {
    text.lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Import(cmd) => run_import(cmd),
        Command::Score(args) => run_score(args),
        Command::Generate(args) => run_generate(args),
        Command::Serve(args) => run_serve(args),
        Command::BenchServe(args) => {
            let opts = rr_serve::bench::BenchOptions {
                rr: std::env::current_exe().context("the path of rr itself")?,
                model: args.model,
                device: args.device,
                clients: args.clients,
                max_tokens: args.max_tokens,
                out: args.out,
            };
            rr_serve::bench::run(&opts, |line| eprintln!("bench-serve: {line}")).map(|_| ())
        }
        Command::Inspect(args) => run_inspect(args),
        Command::Surgery(args) => run_surgery(args),
        Command::Data(cmd) => run_data(cmd),
        Command::Train(args) => run_train(args),
        Command::Eval(args) => run_eval(args),
        Command::Report(args) => run_report(args),
        Command::Bench(BenchCommand::Recurrence(args)) => run_bench(args),
        Command::Export(ExportCommand::Hf { dir, out, eval }) => {
            let files = rr_train::export::export_hf(&dir, &out, eval.as_deref())?;
            println!("wrote {}: {}", out.display(), files.join(", "));
            Ok(())
        }
        Command::Bench(BenchCommand::Report { rr, reference, out }) => {
            let table = rr_bench::report_from_files(&rr, reference.as_deref(), &out)?;
            println!("{table}\nwrote {}", out.display());
            Ok(())
        }
    }
}

fn run_import(cmd: ImportCommand) -> Result<()> {
    let (source, out, summary) = match cmd {
        ImportCommand::Gguf { file, out } => {
            let summary = import::gguf::import_gguf(&file, &out)?;
            (file, out, summary)
        }
        ImportCommand::Llama2c {
            model,
            tokenizer,
            out,
        } => {
            let summary = import::llama2c::import_llama2c(&model, &tokenizer, &out)?;
            (model, out, summary)
        }
    };
    println!(
        "imported {} into {}: {summary:?}",
        source.display(),
        out.display()
    );
    Ok(())
}

fn run_score(args: ScoreArgs) -> Result<()> {
    let text = rr_util::fs::read_text_limited(&args.text_file, rr_eval::job::TEXT_LIMIT)?;
    if text.trim().is_empty() {
        bail!("{}: the text is empty", args.text_file.display());
    }
    let (model, tokenizer) = args.model.load()?;
    let tt = args.model.test_time(&model)?;
    let mut ids = tokenizer.encode(&text, true)?;
    if let Some(max) = args.max_tokens {
        ids.truncate(max);
    }
    let context = model.max_context();
    let window = args.window.unwrap_or(context);
    if window > context {
        bail!("--window {window} is longer than the model's context ({context})");
    }
    let init = model.initial_state(&args.initial_state, tt.seed)?;
    if let Some(path) = &args.dump_logits {
        let (logits, nll) = rr_eval::nll::token_logits(&model, &ids, tt.depth(), &init)
            .with_context(|| format!("scoring {}", args.text_file.display()))?;
        let tensors = [
            ("logits".to_string(), logits),
            ("input_ids".to_string(), tch::Tensor::from_slice(&ids)),
            ("nll".to_string(), tch::Tensor::from_slice(&nll)),
        ];
        rr_model::weights::write_safetensors(&tensors, path)
            .with_context(|| format!("--dump-logits {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let result = rr_eval::nll::score_text_from(&model, &ids, window, tt.depth(), &init)
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

/// The decoding settings `rr generate` asks for on `model`.
fn decode_options(args: &GenerateArgs, model: &AnyModel, tok: &Tokenizer) -> Result<DecodeOptions> {
    let sampling = match (args.greedy, args.temperature) {
        (_, None) if args.top_p.is_some() => bail!("--top-p needs --temperature"),
        (true, _) | (false, None) => Sampling::Greedy,
        (false, Some(temperature)) => Sampling::TopP {
            temperature,
            top_p: args.top_p.unwrap_or(1.0),
        },
    };
    let recurrent_options = args.exit_kl.is_some() || args.latest_m.is_some() || args.warm_start;
    if recurrent_options && !model.is_recurrent() {
        bail!("--exit-kl, --latest-m and --warm-start apply only to recurrent models");
    }
    if let Some(kl) = args.exit_kl.filter(|kl| !(kl.is_finite() && *kl >= 0.0)) {
        bail!("--exit-kl must be a finite number >= 0 (got {kl})");
    }
    let test_time = args.model.test_time(model)?;
    let mut eos_ids = model.eos_token_ids();
    eos_ids.extend(tok.eos_id());
    let mut options = DecodeOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        seed: args.model.seed,
        eos_ids,
        stop_strings: args.stop.clone(),
        use_cache: !args.no_cache,
        keep_logits: false,
        test_time,
        exit: args.exit_kl.map(|threshold| ExitCriterion {
            threshold,
            min_steps: args.min_steps,
            max_steps: test_time.recurrence,
        }),
        warm_start: args.warm_start,
        cache_mode: match args.latest_m {
            Some(0) => bail!("--latest-m must be at least 1"),
            Some(m) => CacheMode::LatestM(m),
            None => CacheMode::Full,
        },
        initial_state: Some(model.initial_state(&args.initial_state, args.model.seed)?),
        token_step: TokenStep::Dynamic,
    };
    options.token_step = match args.cuda_graphs {
        CudaGraphs::Auto => TokenStep::fastest(model, &options),
        CudaGraphs::On => TokenStep::CudaGraph,
        CudaGraphs::Off => TokenStep::Dynamic,
    };
    Ok(options)
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let options = decode_options(&args, &model, &tokenizer)?;
    let prompt = tokenizer.encode(&args.prompt, true)?;
    let mut stdout = std::io::stdout();
    print!("{}", args.prompt);
    stdout.flush().ok();
    let started = std::time::Instant::now();
    let out = decode(&model, Some(&tokenizer), &[prompt], &options, |_, piece| {
        print!("{piece}");
        stdout.flush().ok();
    })?;
    let seconds = started.elapsed().as_secs_f64();
    println!();
    let generation = &out.rows[0];
    let n = generation.ids.len();
    eprintln!(
        "{n} tokens in {seconds:.2} s ({:.1} tokens/s)",
        n as f64 / seconds.max(1e-9),
    );
    if model.is_recurrent() {
        eprintln!(
            "mean core iterations per token {:.2} (max {})",
            generation.mean_steps(),
            options.test_time.recurrence
        );
    }
    Ok(())
}

fn run_serve(args: ServeArgs) -> Result<()> {
    if !(args.request_timeout.is_finite() && args.request_timeout > 0.0) {
        bail!(
            "--request-timeout must be a positive number of seconds (got {})",
            args.request_timeout
        );
    }
    rr_serve::serve(rr_serve::ServeOptions {
        model: args.model,
        host: args.host,
        port: args.port,
        device: args.device,
        dtype: args.dtype.kind(),
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        max_tokens: args.max_tokens,
        request_timeout: std::time::Duration::from_secs_f64(args.request_timeout),
    })
}

fn run_inspect(args: InspectArgs) -> Result<()> {
    let report = inspect::inspect(&args.dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// The layers `rr surgery` keeps: the paper's split, an explicit one, or the most influential
/// layers for the --layers sizes (printing their ranking).
fn surgery_selection(args: &SurgeryArgs) -> Result<rr_surgery::LayerSelection> {
    use rr_surgery::{influence::Influence, LayerSelection};
    let sizes = match args.layers.as_deref() {
        Some(&[p, b, c]) => Some((p, b, c)),
        Some(_) => bail!("--layers: expected three counts P,B,C"),
        None => None,
    };
    if let (Some(Select::Influence), Some(calibration)) = (args.select, &args.calibration) {
        let Some((p, b, c)) = sizes else {
            bail!("--select influence chooses the layers itself: give the sizes as --layers P,B,C")
        };
        let device = Device::cuda_if_available();
        let influence =
            Influence::measure(&args.model, calibration, args.calibration_tokens, device)?;
        print!("{}", influence.table());
        return LayerSelection::by_influence(&influence.per_layer, p, b, c);
    }
    let n = rr_model::LlamaConfig::from_path(&args.model)?.num_hidden_layers;
    match (sizes, &args.core) {
        (Some((p, b, c)), _) => LayerSelection::paper(n, p, b, c),
        (None, Some(core)) => {
            let list = |l: &Option<LayerList>| l.as_ref().map(|l| l.0.clone()).unwrap_or_default();
            LayerSelection::explicit(n, list(&args.prelude), core.0.clone(), list(&args.coda))
        }
        (None, None) => {
            bail!("give --layers P,B,C or an explicit --core (with --prelude and --coda)")
        }
    }
}

fn run_surgery(args: SurgeryArgs) -> Result<()> {
    use rr_surgery::{AdapterInit, Surgery};
    if args.out.exists() && !args.force && !args.dry_run {
        bail!(
            "{}: output already exists (use --force to replace it)",
            args.out.display()
        );
    }
    if !args.dry_run {
        rr_util::fs::ensure_output_apart(&args.out, &[&args.model])?;
    }
    let adapter = match (args.adapter, args.init) {
        (Adapter::Identity, WeightsFrom::Random) => {
            bail!("--adapter identity: --init random draws the adapter too")
        }
        (Adapter::Default, _) => AdapterInit::Default { seed: args.seed },
        (Adapter::Identity, _) => AdapterInit::Identity,
    };
    let selection = surgery_selection(&args)?;
    let mut surgery = Surgery::new(&args.model, selection, adapter, args.mean_recurrence)?;
    if let WeightsFrom::Random = args.init {
        surgery = surgery.with_random_weights(args.seed);
    }
    print!("{}", surgery.table());
    if args.dry_run {
        println!("dry run: nothing written");
        return Ok(());
    }
    surgery.write(&args.out, args.force)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn run_data(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Pack {
            tokenizer,
            input,
            format,
            seq_len,
            out,
            heldout_fraction,
            seed,
        } => {
            let mut opts = rr_data::PackOptions::new(tokenizer, input, format, seq_len, out);
            opts.heldout_fraction = heldout_fraction;
            opts.seed = seed;
            let summary = rr_data::pack(&opts)?;
            for w in summary.warnings() {
                eprintln!("warning: {w}");
            }
            let m = &summary.manifest;
            println!(
                "packed into {}: {} train rows, {} held-out rows of {} tokens",
                summary.out.display(),
                m.splits.train.rows,
                m.splits.heldout.rows,
                m.seq_len + 1
            );
        }
        DataCommand::SynthMath {
            problems,
            max_steps,
            seed,
            out,
        } => {
            rr_data::check_synth_request(problems, max_steps)?;
            let generated = rr_data::synth_math(problems, max_steps, seed);
            rr_data::write_synth_math(&out, &generated)?;
            println!(
                "wrote {} problems (1-{max_steps} steps) to {}",
                generated.len(),
                out.display()
            );
        }
    }
    Ok(())
}

fn run_train(args: TrainArgs) -> Result<()> {
    if let Some(nproc) = args.nproc_per_node {
        return rr_train::launch::local_ranks(nproc, "--nproc-per-node");
    }
    let mut cfg = rr_recipe::TrainConfig::from_path(&args.config)?;
    if args.baseline {
        cfg = cfg
            .baseline_variant()
            .with_context(|| args.config.display().to_string())?;
    }
    if args.control {
        cfg = cfg
            .control_variant()
            .with_context(|| args.config.display().to_string())?;
    }
    let match_flops = args
        .match_flops
        .as_deref()
        .map(rr_train::trainer::run_flops)
        .transpose()?;
    let run_dir = args
        .run_dir
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let opts = rr_train::TrainOptions {
        run_dir: run_dir.clone(),
        resume: args.resume,
        force: args.force,
        match_flops,
        collective_timeout: std::time::Duration::from_secs(args.collective_timeout),
    };
    let summary = rr_train::train(&cfg, &opts)?;
    if !rr_train::launch::is_rank_zero() {
        return Ok(());
    }
    println!(
        "trained {} for {} steps in {:.0} s; final loss {:.4}; report in {}",
        summary.name,
        summary.steps,
        summary.wall_seconds,
        summary.final_loss,
        run_dir.join("summary.md").display()
    );
    Ok(())
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let options = rr_eval::evaluate::EvalOptions {
        heldout: None,
        tasks: args.tasks,
        recurrences: args.recurrences,
        limit: args.limit,
        seed: args.model.seed,
        batch_size: args.batch_size,
        max_new_tokens: args.max_new_tokens,
        log_samples: args.log_samples,
        initial_state: args.initial_state,
        data_dir: args.data.unwrap_or_else(|| {
            std::env::var_os("RR_SHARED_DATA")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("../shared/data"))
        }),
    };
    let job = rr_eval::job::EvalJob {
        model: args.model.model.clone(),
        recurrence: args.model.recurrence,
        device: args.model.device,
        dtype: args.model.dtype.kind(),
        options,
        heldout: args.heldout,
        heldout_rows: args.heldout_rows,
        baseline: args.baseline,
        out: args.out.clone(),
    };
    let report = job.run(|line| eprintln!("{line}"))?;
    print!("{}", report.to_markdown());
    println!("wrote {}", args.out.display());
    Ok(())
}

fn run_report(args: ReportArgs) -> Result<()> {
    let out = args
        .out
        .unwrap_or_else(|| args.run_dir.parent().map(PathBuf::from).unwrap_or_default());
    let path = rr_train::report::write_comparison(&args.run_dir, args.baseline.as_deref(), &out)?;
    if let Some(eval) = &args.eval {
        rr_train::report::append_eval(&path, eval, &out)?;
    }
    if let (Some(control), Some(control_eval), Some(eval)) =
        (&args.control, &args.control_eval, &args.eval)
    {
        rr_train::side_by_side::append(
            &path,
            &args.run_dir,
            eval,
            (control, control_eval),
            args.baseline.as_deref(),
        )?;
    }
    println!("wrote {}", path.display());
    Ok(())
}

fn run_bench(args: BenchArgs) -> Result<()> {
    use rr_bench::{BenchSpec, Shape};
    let layers = match args.layers.as_deref() {
        None => None,
        Some(&[p, c, d]) => Some((p, c, d)),
        Some(_) => bail!("--layers: expected three numbers, prelude,core,coda"),
    };
    let shape = match args.shape {
        ShapeName::Tiny => "tiny",
        ShapeName::Smollm2 => "smollm2",
        ShapeName::Tinyllama => "tinyllama",
        ShapeName::Llama32_1b => "llama3.2-1b",
    };
    let cuda = args.device.is_cuda();
    let dtype = match args.dtype {
        Some(d) => d.kind(),
        None if cuda => Kind::BFloat16,
        None => Kind::Float,
    };
    rr_eval::evaluate::check_recurrences(&args.recurrences).context("--recurrences")?;
    rr_eval::evaluate::check_recurrences(&args.backprop).context("--backprop")?;
    let spec = BenchSpec {
        device: if cuda { "cuda" } else { "cpu" }.into(),
        dtype: rr_model::recurrent::dtype_name(dtype).to_string(),
        shape: Shape::preset(shape, layers)?,
        batch: args.batch,
        seq: args.seq,
        gen_prompt: args.gen_prompt,
        gen_tokens: args.gen_tokens,
        warmup: args.warmup,
        repeats: args.repeats,
        threads: args.threads,
        points: BenchSpec::points_for(&args.recurrences, &args.backprop),
    };
    let result = rr_bench::run(&spec, |row| {
        eprintln!(
            "rr {:?} r={} k={}: {:.1} ms, {:.1} tok/s",
            row.kind,
            row.r,
            row.k,
            row.ms.unwrap_or(f64::NAN),
            row.tokens_per_s.unwrap_or(f64::NAN)
        );
    })?;
    eprintln!("cpu: {}", result.cpu);
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    rr_util::fs::write_atomic(&args.out, serde_json::to_string_pretty(&result)?.as_bytes())?;
    println!("wrote {}", args.out.display());
    Ok(())
}
