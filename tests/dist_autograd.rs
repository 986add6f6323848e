//! The two autograd functions of data parallelism against single-process autograd on the
//! concatenated batch, with two Gloo ranks as two threads of this process: the differentiable
//! all-gather (global negatives) and the synchronized batch norm (global BN).
use simclr::dist::{ProcessGroup, Rendezvous};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const WORLD: usize = 2;

/// Runs `f(group)` on WORLD ranks (threads) and returns their results in rank order.
fn on_ranks<T: Send + 'static>(f: impl Fn(&ProcessGroup) -> T + Send + Sync + 'static) -> Vec<T> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let f = Arc::new(f);
    let threads: Vec<_> = (0..WORLD)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || {
                let rendezvous = Rendezvous {
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                    rank,
                    world_size: WORLD,
                    local_rank: rank,
                };
                let group = ProcessGroup::new(&rendezvous, Device::Cpu, Duration::from_secs(30))
                    .expect("rendezvous");
                f(&group)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("rank thread"))
        .collect()
}

/// Fixed pseudo-random data, the same in every thread.
fn data(shape: &[i64], seed: i64) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Double, Device::Cpu)) * (0.37 + seed as f64) + seed as f64)
        .sin()
        .view(shape)
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert!(
        a.allclose(b, 1e-10, 1e-10, false),
        "{what} differs: max |diff| {}",
        (a - b).abs().max().double_value(&[])
    );
}

/// Each rank's loss depends on every rank's rows (as each anchor's NT-Xent does on all
/// candidates); the gradients of each rank's rows equal the gradient of the summed losses on
/// the concatenated batch. Without the all-reduce in the backward pass (the peers' bug in
/// anchors.md) rank r would only see the gradient of its own loss.
#[test]
fn all_gather_gradients_equal_autograd_on_the_concatenated_batch() {
    let rows = 3;
    // Rank r's loss on the gathered [2·rows, 4] matrix y: Σ c_r ⊙ y² + Σ (y y^T) d_r.
    let loss = move |y: &Tensor, r: usize| {
        (data(&[WORLD as i64 * rows, 4], 10 + r as i64) * y.square()).sum(Kind::Double)
            + (y.matmul(&y.tr()) * data(&[WORLD as i64 * rows, WORLD as i64 * rows], 20 + r as i64))
                .sum(Kind::Double)
    };
    let all = data(&[WORLD as i64 * rows, 4], 1).requires_grad_(true);
    let total = (0..WORLD)
        .map(|r| loss(&all, r))
        .fold(Tensor::from(0.0f64), |a, b| a + b);
    total.backward();
    let expected = all.grad();

    let got = on_ranks(move |group| {
        let r = group.rank() as i64;
        let x = data(&[WORLD as i64 * rows, 4], 1)
            .narrow(0, r * rows, rows)
            .copy()
            .requires_grad_(true);
        let y = group.all_gather_with_grad(&x).expect("all-gather");
        loss(&y, group.rank()).backward();
        group.check().expect("backward collectives");
        x.grad()
    });
    assert_close(
        &Tensor::cat(&got, 0),
        &expected,
        "gradient of the gathered rows",
    );
}

/// Synchronized batch norm over two ranks' halves equals plain training-mode batch norm of the
/// whole batch: outputs, input/weight/bias gradients (the weight and bias gradients summed over
/// the ranks), and the running statistics, which are the same on both ranks.
#[test]
fn sync_batch_norm_equals_batch_norm_on_the_concatenated_batch() {
    let (n, c) = (4, 3);
    let shape = [WORLD as i64 * n, c, 2, 2];
    let upstream = data(&shape, 7);
    let x = data(&shape, 2).requires_grad_(true);
    let (weight, bias) = (
        (data(&[c], 3) + 1.5).requires_grad_(true),
        data(&[c], 4).requires_grad_(true),
    );
    let (mean, var) = (
        Tensor::zeros([c], (Kind::Double, Device::Cpu)),
        Tensor::ones([c], (Kind::Double, Device::Cpu)),
    );
    let y = Tensor::batch_norm(
        &x,
        Some(&weight),
        Some(&bias),
        Some(&mean),
        Some(&var),
        true,
        0.1,
        1e-5,
        false,
    );
    (&y * &upstream).sum(Kind::Double).backward();
    let expected = [y.detach(), x.grad(), weight.grad(), bias.grad(), mean, var];

    let got = on_ranks(move |group| {
        let r = group.rank() as i64;
        let x = data(&shape, 2)
            .narrow(0, r * n, n)
            .copy()
            .requires_grad_(true);
        let (weight, bias) = (
            (data(&[c], 3) + 1.5).requires_grad_(true),
            data(&[c], 4).requires_grad_(true),
        );
        let (mean, var) = (
            Tensor::zeros([c], (Kind::Double, Device::Cpu)),
            Tensor::ones([c], (Kind::Double, Device::Cpu)),
        );
        let y = group
            .sync_batch_norm(&x, Some(&weight), Some(&bias), &mean, &var, 0.1, 1e-5)
            .expect("sync batch norm");
        (&y * data(&shape, 7).narrow(0, r * n, n))
            .sum(Kind::Double)
            .backward();
        group.check().expect("backward collectives");
        [y.detach(), x.grad(), weight.grad(), bias.grad(), mean, var]
    });
    let names = [
        "output",
        "input gradient",
        "weight gradient",
        "bias gradient",
    ];
    for (i, name) in names.iter().enumerate().take(2) {
        let joined = Tensor::cat(&[&got[0][i], &got[1][i]], 0);
        assert_close(&joined, &expected[i], name);
    }
    for (i, name) in names.iter().enumerate().skip(2) {
        assert_close(&(&got[0][i] + &got[1][i]), &expected[i], name);
    }
    for rank in &got {
        assert_close(&rank[4], &expected[4], "running mean");
        assert_close(&rank[5], &expected[5], "running variance");
    }
}
