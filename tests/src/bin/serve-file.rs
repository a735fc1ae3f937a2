//! Serves one file over HTTP/1.1 on loopback (with Range support) until killed, using the
//! same fixture the artifact tests use. For benchmarks: `serve-file FILE [PORT]` prints
//! the URL on stdout once listening.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let content = std::fs::read(&args[1]).expect("read the file to serve");
    let port: u16 = args.get(2).map_or(0, |p| p.parse().expect("port"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let fixture = pangaea_tests::http_fixture::HttpFixture::start_on(content, port).await;
        println!("{}", fixture.url());
        std::future::pending::<()>().await;
    });
}
