//! Hash throughput of the artifact pipeline's hasher: `bench-hash FILE [sha256|sha512]`
//! prints the digest and MB/s (the file should be in the page cache: run it twice).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = match args.get(2).map(String::as_str) {
        Some("sha512") => pangaea_artifact::DigestKind::Sha512,
        _ => pangaea_artifact::DigestKind::Sha256,
    };
    let path = std::path::Path::new(&args[1]);
    let size = std::fs::metadata(path).expect("file").len();
    let start = std::time::Instant::now();
    let d = pangaea_artifact::Digest::of_file(kind, path).expect("readable file");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{d} seconds={secs:.3} mb_per_s={:.0}",
        size as f64 / secs / 1e6
    );
}
