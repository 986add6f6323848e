//! Build script: compiles the C++ shim (`src/csrc/*.cpp`) against the same libtorch that
//! `torch-sys` links, and makes the final binaries run without `LD_LIBRARY_PATH`.
//!
//! - libtorch's lib dir comes from torch-sys (`DEP_TCH_LIBTORCH_LIB`); headers sit beside it.
//! - Gloo headers (Debian's libgloo-dev) and CUDA/NCCL headers (the venv's `nvidia/` packages,
//!   installed by `scripts/setup.sh`) switch on the distributed parts of the shim. Without them
//!   the shim still builds; `simclr info` reports what was compiled in.
//! - `-Wl,-rpath,<libdir>` so the binary finds libtorch; `--no-as-needed -ltorch_cuda` because
//!   nothing references libtorch_cuda directly and the linker would otherwise drop it, leaving
//!   CUDA invisible at run time even on a GPU machine.
use std::path::{Path, PathBuf};

const SETUP_HINT: &str = "libtorch not found: run scripts/setup.sh first";

fn main() {
    let lib_dir = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => panic!("{SETUP_HINT}"),
    };
    // Resolve the .libtorch link so that the venv's other packages can be found beside it.
    let torch_dir = lib_dir
        .parent()
        .and_then(|dir| dir.canonicalize().ok())
        .unwrap_or_else(|| panic!("{SETUP_HINT} ({} does not exist)", lib_dir.display()));
    let include = torch_dir.join("include");
    if !include.join("torch/script.h").exists() {
        panic!("{SETUP_HINT} (no headers under {})", include.display());
    }
    // The venv's site-packages holds torch/ and nvidia/ side by side.
    let site_packages = torch_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/csrc/shim.cpp")
        .file("src/csrc/additive_similarity.cpp")
        .file("src/csrc/dist.cpp")
        .file("src/csrc/sync_batch_norm.cpp")
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .warnings(false)
        .flag_if_supported("-Wno-unused-parameter");

    let gloo = Path::new("/usr/include/gloo/algorithm.h").exists();
    if gloo {
        build
            .define("USE_C10D_GLOO", None)
            .define("USE_DISTRIBUTED", None);
    } else {
        println!("cargo:warning=Gloo headers missing (libgloo-dev): CPU collectives disabled");
    }
    let cuda_include = site_packages.join("nvidia/cu13/include");
    let nccl_include = site_packages.join("nvidia/nccl/include");
    let nccl =
        cuda_include.join("cuda_runtime_api.h").exists() && nccl_include.join("nccl.h").exists();
    if nccl {
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("USE_DISTRIBUTED", None)
            .include(&cuda_include)
            .include(cuda_include.join("cccl"))
            .include(&nccl_include);
    } else {
        println!("cargo:warning=CUDA/NCCL headers missing (scripts/setup.sh): NCCL disabled");
    }
    build.compile("simclr_shim");

    let lib = lib_dir.display();
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    println!("cargo:rerun-if-changed=src/csrc");
    println!("cargo:rerun-if-changed=build.rs");
}
