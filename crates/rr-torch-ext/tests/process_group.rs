//! Real c10d collectives between two processes on 127.0.0.1 (Gloo on CPU). Each test runs its
//! own binary again as rank 0 and rank 1 (`RR_PG_TEST_ROLE` set), torchrun-style environment.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rr_torch_ext::dist::{Backend, ProcessGroup, Rendezvous};
use tch::{Kind, Tensor};

const ROLE: &str = "RR_PG_TEST_ROLE";

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `test` as two ranks and returns their outputs (rank order).
fn two_ranks(test: &str, role: &str) -> Vec<Output> {
    start_two_ranks(test, role)
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn start_two_ranks(test: &str, role: &str) -> Vec<std::process::Child> {
    let port = free_port().to_string();
    (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(ROLE, role)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

fn join(timeout: Duration) -> ProcessGroup {
    let rdv = Rendezvous::from_env().unwrap().expect("WORLD_SIZE set");
    ProcessGroup::new(&rdv, Backend::Gloo, timeout).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.reshape([-1])).unwrap()
}

#[test]
fn collectives_between_two_processes() {
    if std::env::var(ROLE).is_err() {
        let outputs = two_ranks("collectives_between_two_processes", "collectives");
        for (rank, out) in outputs.iter().enumerate() {
            assert!(out.status.success(), "rank {rank} failed: {:?}", out.status);
        }
        return;
    }
    let pg = join(Duration::from_secs(30));
    let r = pg.rank() as f32;
    assert_eq!(pg.world(), 2);
    // Coalesced sum over two tensors of different shapes: ranks hold (1, 2, 3)+r and 10·(r+1).
    let a = Tensor::from_slice(&[1f32, 2., 3.]) + r as f64;
    let b = Tensor::full(
        [2, 2],
        10.0 * (r as f64 + 1.0),
        (Kind::Float, tch::Device::Cpu),
    );
    pg.all_reduce(&[a.shallow_clone(), b.shallow_clone()], false)
        .unwrap();
    assert_eq!(values(&a), vec![3., 5., 7.]); // (1+0)+(1+1), ...
    assert_eq!(values(&b), vec![30.; 4]); // 10 + 20
                                          // Average: (0 + 1) / 2.
    let c = Tensor::from_slice(&[r]);
    pg.all_reduce(&[c.shallow_clone()], true).unwrap();
    assert_eq!(values(&c), vec![0.5]);
    // Broadcast from rank 1.
    let d = Tensor::from_slice(&[r * 7.0, r * 8.0]);
    pg.broadcast(&d, 1).unwrap();
    assert_eq!(values(&d), vec![7., 8.]);
    // All-gather, rank order.
    let gathered = pg.all_gather(&Tensor::from_slice(&[r, r + 100.0])).unwrap();
    assert_eq!(values(&gathered[0]), vec![0., 100.]);
    assert_eq!(values(&gathered[1]), vec![1., 101.]);
    pg.barrier().unwrap();
}

#[test]
fn a_dead_peer_is_an_error_naming_it_within_the_timeout() {
    if std::env::var(ROLE).is_err() {
        let started = Instant::now();
        let outputs = two_ranks(
            "a_dead_peer_is_an_error_naming_it_within_the_timeout",
            "dead",
        );
        let rank0 = String::from_utf8_lossy(&outputs[0].stdout).to_string();
        assert!(outputs[0].status.success(), "rank 0: {rank0}");
        assert!(rank0.contains("rank 0: all-reduce failed"), "{rank0}");
        assert!(rank0.contains("lost rank 1"), "{rank0}");
        // Well inside the 20 s collective timeout (detection plus the 2.5 s heartbeat grace).
        assert!(started.elapsed() < Duration::from_secs(40));
        return;
    }
    let pg = join(Duration::from_secs(20));
    pg.barrier().unwrap();
    if pg.rank() == 1 {
        let me = std::process::id().to_string();
        let _ = Command::new("kill").args(["-9", &me]).status();
        unreachable!("kill -9 returned");
    }
    std::thread::sleep(Duration::from_millis(300));
    let err = pg
        .all_reduce(&[Tensor::from_slice(&[1f32])], false)
        .unwrap_err();
    println!("{err:#}");
}

#[test]
fn a_hung_peer_is_an_error_naming_it_after_the_timeout() {
    if std::env::var(ROLE).is_err() {
        let mut children = start_two_ranks(
            "a_hung_peer_is_an_error_naming_it_after_the_timeout",
            "hung",
        );
        let mut rank1 = children.pop().unwrap();
        let rank0 = children.pop().unwrap().wait_with_output().unwrap();
        let _ = rank1.kill(); // stopped, not dead: SIGKILL still ends it
        let _ = rank1.wait();
        let text = String::from_utf8_lossy(&rank0.stdout).to_string();
        assert!(rank0.status.success(), "rank 0: {text}");
        assert!(text.contains("rank 0: all-reduce failed"), "{text}");
        assert!(text.contains("lost rank 1"), "{text}");
        return;
    }
    let pg = join(Duration::from_secs(3));
    pg.barrier().unwrap();
    if pg.rank() == 1 {
        // Hangs: stopped by SIGSTOP, its heartbeat thread with it.
        let me = std::process::id().to_string();
        let _ = Command::new("kill").args(["-STOP", &me]).status();
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let err = pg
        .all_reduce(&[Tensor::from_slice(&[1f32])], false)
        .unwrap_err();
    println!("{err:#}");
}

/// World 1 on 127.0.0.1 at a free port.
fn world_one() -> Rendezvous {
    Rendezvous {
        rank: 0,
        world: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
    }
}

#[test]
fn nccl_is_compiled_in_beside_gloo_when_setup_fetched_the_cuda_headers() {
    // `cargo xtask setup` unpacks the headers only for a CUDA wheel set; with them the shim
    // must have both backends in one binary.
    let headers = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.deps/cuda/include/crt/host_config.h");
    let (gloo, nccl) = rr_torch_ext::dist::backends_built();
    println!(
        "built with: Gloo {gloo}, NCCL {nccl}; CUDA headers present: {}",
        headers.exists()
    );
    if headers.exists() {
        assert!(gloo && nccl, "Gloo {gloo}, NCCL {nccl}");
        assert!(rr_torch_ext::cuda_graph::cuda_graphs_built());
    }
}

#[test]
fn nccl_on_a_machine_without_cuda_is_a_clear_error() {
    if tch::Cuda::is_available() {
        println!("skipped: this machine has CUDA (see nccl_world_one_all_reduce)");
        return;
    }
    let err = ProcessGroup::new(&world_one(), Backend::Nccl, Duration::from_secs(10))
        .err()
        .expect("NCCL without CUDA must fail");
    let text = format!("{err:#}");
    assert!(
        text.contains("NCCL runs on CUDA devices and this machine has none"),
        "{text}"
    );
    assert!(!text.contains("built without"), "{text}");
}

#[test]
fn nccl_world_one_all_reduce() {
    let (_, nccl) = rr_torch_ext::dist::backends_built();
    if !tch::Cuda::is_available() || !nccl {
        println!(
            "skipped: needs CUDA (available: {}) and NCCL compiled in (built: {nccl})",
            tch::Cuda::is_available()
        );
        return;
    }
    let device = tch::Device::Cuda(0);
    let pg = ProcessGroup::new(&world_one(), Backend::Nccl, Duration::from_secs(60)).unwrap();
    assert_eq!(pg.backend(), Backend::Nccl);
    // World 1: a sum is the identity, an average too; both go through NCCL's kernels.
    let a = Tensor::from_slice(&[1f32, 2., 3.]).to_device(device);
    let b = Tensor::from_slice(&[5f32]).to_device(device);
    pg.all_reduce(&[a.shallow_clone(), b.shallow_clone()], false)
        .unwrap();
    pg.all_reduce(&[a.shallow_clone()], true).unwrap();
    assert_eq!(values(&a.to_device(tch::Device::Cpu)), vec![1., 2., 3.]);
    assert_eq!(values(&b.to_device(tch::Device::Cpu)), vec![5.]);
    let gathered = pg.all_gather(&b).unwrap();
    assert_eq!(values(&gathered[0].to_device(tch::Device::Cpu)), vec![5.]);
    pg.barrier().unwrap();
}
