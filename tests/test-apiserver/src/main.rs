//! test-apiserver: a stand-in for kube-apiserver (test infrastructure, see issue #3).

fn main() {
    eprintln!("test-apiserver: not built yet");
    std::process::exit(2);
}
