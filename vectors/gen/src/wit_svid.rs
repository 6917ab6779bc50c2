//! Suite `wit-svid`: WITs under the SPIFFE WIT-SVID profile, with keys from a SPIFFE bundle.

use serde::Serialize;
use serde_json::{Value, json};
use wimse_core::ErrorKind::*;

use crate::jwt::{canonical, decode, header, jwt, set};
use crate::keys::{Key, Keys};
use crate::suite::*;

#[derive(Debug, Serialize)]
struct Verifier {
    now: u64,
    trust_domain: &'static str,
    bundle: Value,
    leeway: u64,
    max_wit_lifetime: u64,
    profile_algorithms: [&'static str; 9],
}

fn case(id: &'static str, description: &'static str, expect: &'static str, token: String) -> Case {
    let (header, claims) = decode(&token);
    Case { id, description, expect, token: Some(token), header: Some(header), claims: Some(claims), ..Case::default() }
}

/// A bundle entry: the public JWK with its `use`.
fn entry(key: &Key, key_use: &str) -> Value {
    let mut jwk = serde_json::to_value(key.public()).expect("a JWK");
    set(&mut jwk, "use", key_use.into());
    jwk
}

pub(crate) fn suite(keys: &Keys) -> String {
    let k = keys;
    let signer = &k.wit_svid_es256;
    let claims = |label: &str| wit_claims(CLIENT, &k.client_es256, label);
    // `kid` as given (None: no kid), `typ` wit+jwt unless given.
    let svid =
        |key: &Key, kid: Option<&str>, typ: &str, claims: &Value| jwt(&header(key.alg(), Some(typ), kid), claims, key);
    let standard = |label: &str, edit: &dyn Fn(&mut Value)| {
        let mut c = claims(label);
        edit(&mut c);
        svid(signer, Some("wit-es256"), "wit+jwt", &c)
    };

    let cases = vec![
        case(
            "valid-es256",
            "an ES256 WIT-SVID with `kid`, `typ` wit+jwt, no `aud`, an ES256 confirmation key",
            VALID,
            standard("svid-valid", &|_| {}),
        ),
        case(
            "missing-kid",
            "no `kid` (the profile requires one; the bundle's only ES256 WIT key would otherwise be unambiguous)",
            reason(MissingKeyId),
            svid(signer, None, "wit+jwt", &claims("svid-no-kid")),
        ),
        case(
            "aud-present",
            "an `aud` claim, which a WIT-SVID must not carry",
            reason(ForbiddenClaim("aud")),
            standard("svid-aud", &|c| set(c, "aud", "spiffe://vectors.example/ledger".into())),
        ),
        case(
            "eddsa-signature",
            "signed with EdDSA by a key the bundle does list for WIT-SVIDs: the profile allows no EdDSA",
            reason(DisallowedAlgorithm),
            svid(&k.wit_svid_eddsa, Some("wit-eddsa"), "wit+jwt", &claims("svid-eddsa")),
        ),
        case(
            "eddsa-confirmation-key",
            "`cnf.jwk.alg` EdDSA: the profile allows no EdDSA proof key",
            reason(InvalidConfirmationKey),
            svid(signer, Some("wit-es256"), "wit+jwt", &wit_claims(BATCH, &k.client_eddsa, "svid-eddsa-cnf")),
        ),
        case(
            "jwt-svid-key",
            "signed by the bundle's JWT-SVID key (`use` jwt-svid): only `use` wit-svid entries are WIT keys",
            reason(UnknownKey),
            svid(&k.jwt_svid_es256, Some("jwt-es256"), "wit+jwt", &claims("svid-jwt-key")),
        ),
        case("typ-jwt", "`typ` JWT", reason(WitWrongType), svid(signer, Some("wit-es256"), "JWT", &claims("svid-typ"))),
        case(
            "bad-signature",
            "signed by a key nobody trusts, with the WIT key's `kid`",
            reason(InvalidWitSignature),
            svid(&k.rogue_es256, Some("wit-es256"), "wit+jwt", &claims("svid-forged")),
        ),
        case(
            "expired",
            "`exp` passed 30 seconds ago: the leeway is used up",
            reason(ExpiredWit),
            standard("svid-expired", &|c| set(c, "exp", json!(NOW - LEEWAY))),
        ),
        case(
            "not-yet-valid",
            "`nbf` is 31 seconds ahead",
            reason(WitNotYetValid),
            standard("svid-nbf", &|c| set(c, "nbf", json!(NOW + LEEWAY + 1))),
        ),
    ];

    let bundle = json!({
        "keys": [entry(&k.wit_svid_es256, "wit-svid"), entry(&k.wit_svid_eddsa, "wit-svid"), entry(&k.jwt_svid_es256, "jwt-svid")],
        "spiffe_refresh_hint": 300,
        "spiffe_sequence": 1,
    });
    Suite {
        format: FORMAT,
        suite: "wit-svid",
        title: "WITs under the SPIFFE WIT-SVID profile, with keys from the trust domain's SPIFFE bundle",
        drafts: vec![
            "SPIFFE WIT-SVID (spiffe/spiffe standards/WIT-SVID.md, incubating, 665a28f 2026-07-01)",
            wimse_core::draft::revisions::WORKLOAD_CREDS,
        ],
        generated_by: GENERATED_BY,
        procedure: vec![
            "Keys: the entries of `verifier.bundle` whose `use` is `wit-svid` (WIT-SVID §6.2); every other entry is ignored.",
            "Validate `token` as a WIT (as in the wpt suite) with those keys for `verifier.trust_domain`.",
            "Profile: `typ` wit+jwt; `alg` one of `verifier.profile_algorithms` (no EdDSA, §2.3); `kid` present (§2.1); no `aud` (§3.8); `cnf.jwk.alg` one of `verifier.profile_algorithms` (§3.2).",
            "Each negative breaks one rule, so the order of the two steps does not change the outcome (a wrong `typ` fails both, with the same reason).",
            "The token alone is checked here: a WIT-SVID is only ever accepted with a proof of possession (the wpt and http-signature suites).",
        ],
        keys: [&k.wit_svid_es256, &k.wit_svid_eddsa, &k.jwt_svid_es256, &k.client_es256, &k.client_eddsa, &k.rogue_es256]
            .into_iter()
            .map(Key::entry)
            .collect(),
        verifier: Verifier {
            now: NOW,
            trust_domain: TRUST_DOMAIN,
            bundle: canonical(&bundle),
            leeway: LEEWAY,
            max_wit_lifetime: MAX_WIT_LIFETIME,
            profile_algorithms: wimse_core::protocol::wit_svid::ALGORITHMS,
        },
        cases,
    }
    .render()
}
