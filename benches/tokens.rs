//! Checking a stream's token: what `--subscribe-jwt` adds to opening a stream, per key type.
//!
//! Runs once per connect (never per event). Each case is a whole `Trust::verify`: header and
//! claims decoded, the signature checked, the claims judged, the grants built. The keys are
//! generated here; the RSA key is 2048 bits, the usual size.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::signature::KeyPair as _;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sse_edge::auth::jwt::{KeySource, Trust};

const SECRET: &str = "bench-secret-bench-secret-bench-00";
const NOW: u64 = 1_800_000_000;

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// A trust of one key written to a file, and a token signed by its private half.
fn case(name: &str, public_pem: &str, key: EncodingKey, alg: Algorithm) -> (Trust, String) {
    let path =
        std::env::temp_dir().join(format!("sse-edge-bench-{}-{name}.pem", std::process::id()));
    std::fs::write(&path, public_pem).unwrap();
    let trust = Trust::load(
        "--subscribe-jwt",
        vec![KeySource::File(path.clone())],
        Default::default(),
    )
    .unwrap();
    std::fs::remove_file(&path).ok();
    (trust, token(&key, alg))
}

fn token(key: &EncodingKey, alg: Algorithm) -> String {
    let claims = serde_json::json!({
        "exp": NOW + 3600,
        "sub": "user-42",
        "sse_edge": {"subscribe": ["user/42/*", "news"]},
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn bench(c: &mut Criterion) {
    let hs = Trust::load(
        "--subscribe-jwt",
        vec![SECRET.parse().unwrap()],
        Default::default(),
    )
    .unwrap();
    let hs_token = token(
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        Algorithm::HS256,
    );

    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa_private = pem(
        "PRIVATE KEY",
        AsDer::<Pkcs8V1Der>::as_der(&rsa).unwrap().as_ref(),
    );
    let rs = case(
        "rsa",
        &pem("PUBLIC KEY", rsa.public_key().as_der().unwrap().as_ref()),
        EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
        Algorithm::RS256,
    );

    let rng = aws_lc_rs::rand::SystemRandom::new();
    let p256 = &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let ec_pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(p256, &rng).unwrap();
    let ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(p256, ec_pkcs8.as_ref()).unwrap();
    let es = case(
        "ec",
        &pem("PUBLIC KEY", ec.public_key().as_der().unwrap().as_ref()),
        EncodingKey::from_ec_pem(pem("PRIVATE KEY", ec_pkcs8.as_ref()).as_bytes()).unwrap(),
        Algorithm::ES256,
    );

    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
    let ed_private = pem("PRIVATE KEY", ed.to_pkcs8v1().unwrap().as_ref());
    let eddsa = case(
        "ed",
        &pem("PUBLIC KEY", ed.public_key().as_der().unwrap().as_ref()),
        EncodingKey::from_ed_pem(ed_private.as_bytes()).unwrap(),
        Algorithm::EdDSA,
    );

    let mut group = c.benchmark_group("verify_token");
    group.bench_function("hs256", |b| {
        b.iter(|| hs.verify(std::hint::black_box(&hs_token), NOW).unwrap())
    });
    for (name, (trust, token)) in [("rs256_2048", &rs), ("es256", &es), ("eddsa", &eddsa)] {
        group.bench_function(name, |b| {
            b.iter(|| trust.verify(std::hint::black_box(token), NOW).unwrap())
        });
    }
    // A token signed by none of the keys: what a flood of bad tokens costs (one check per
    // key of its algorithm).
    let forged = token(
        &EncodingKey::from_secret(b"attacker-secret-attacker-secret-0").unwrap(),
        Algorithm::HS256,
    );
    group.bench_function("hs256_bad_signature", |b| {
        b.iter(|| hs.verify(std::hint::black_box(&forged), NOW).unwrap_err())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
