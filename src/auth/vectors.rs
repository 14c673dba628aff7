//! Spark 4.3.0's captured handshakes and traffic (spark-auth.md, Appendix A), verbatim:
//! appId `sparkSaslUser`, secret `rpcenv-test-secret`, every random draw that reached the
//! wire, the frames, the derived values, and the encrypted "hello" / "world" RPCs.

use super::{Cipher, EngineVersion};

/// One captured scenario.
pub(super) struct Scenario {
    /// Its name in the appendix.
    pub(super) name: &'static str,
    /// `spark.network.crypto.cipher`.
    pub(super) cipher: Cipher,
    /// `spark.network.crypto.authEngineVersion`.
    pub(super) version: EngineVersion,
    /// The secret the client used (the server always uses `rpcenv-test-secret`).
    pub(super) client_secret: &'static str,
    /// The client's draws: raw X25519 private key, salt, AES-GCM nonce.
    pub(super) client_draws: [&'static str; 3],
    /// The whole `RpcRequest` frame of the challenge (21 header bytes, then the body).
    pub(super) challenge_frame: &'static str,
    /// HKDF(secret, client salt, appId ‖ client salt, 16).
    pub(super) client_kek: &'static str,
    /// The client's X25519 public key.
    pub(super) client_public: &'static str,
    /// Everything after the challenge; `None` when the server refused it.
    pub(super) server: Option<ServerSide>,
}

/// The server's answer and what followed it.
pub(super) struct ServerSide {
    /// The server's draws: raw X25519 private key, salt, AES-GCM nonce.
    pub(super) draws: [&'static str; 3],
    /// The whole `RpcResponse` frame.
    pub(super) response_frame: &'static str,
    /// HKDF(secret, server salt, appId ‖ server salt ‖ challenge, 16).
    pub(super) server_kek: &'static str,
    /// The server's X25519 public key.
    pub(super) server_public: &'static str,
    /// The X25519 shared secret.
    pub(super) shared: &'static str,
    /// Challenge body ‖ response body.
    pub(super) transcript: &'static str,
    /// The channel key.
    pub(super) session_key: &'static str,
    /// HKDF "inputIv": the server → client IV.
    pub(super) input_iv: &'static str,
    /// HKDF "outputIv": the client → server IV.
    pub(super) output_iv: &'static str,
    /// The encrypted frames, in the order each direction sent them.
    pub(super) records: &'static [Record],
}

/// One frame on the encrypted channel.
pub(super) struct Record {
    /// Sent by the client (else by the server).
    pub(super) from_client: bool,
    /// The frame.
    pub(super) plaintext: &'static str,
    /// What went on the wire: CTR ciphertext, or a whole GCM envelope.
    pub(super) wire: &'static str,
    /// GCM: the sender's draws for this envelope (salt, then nonce prefix); CTR: empty.
    pub(super) draws: &'static str,
    /// GCM: the envelope's key, HKDF(session key, salt, u64_be(total)); CTR: empty.
    pub(super) envelope_key: &'static str,
}

/// All five scenarios.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "ctr-v1",
        cipher: Cipher::AesCtr,
        version: EngineVersion::V1,
        client_secret: "rpcenv-test-secret",
        client_draws: [
            "6de42dc722cef405a7a3257f73e9f06d83bd8f1379f6ea76efb8887a53978037",
            "30368efd1a259d44d166020c50c939f9",
            "b171f5cf971ade59325c8c9e",
        ],
        challenge_frame: "000000000000007b034b1525346e23171900000066fb0000000d737061726b5361736c557365720000001030368efd1a259d44d166020c50c939f90000003cb171f5cf971ade59325c8c9e938709774527109ca48c7632a4292867261243c5d54cb837124d5629a9d8ed91f3eaa361f8ecb50ef4b2b8884b909e96",
        client_kek: "3128b26690e144eb5ffe341d867985c6",
        client_public: "1f4cdc476a18a5014f36d217052c271bca7adf890233ad3d605f0835b2dc447f",
        server: Some(ServerSide {
            draws: [
                "0b04434ee52e9baf313d0f849c83bb06a3de60ff1e94b6960e4479e7f0e47767",
                "4f6a61b075ce7479e23c19652eacb65b",
                "113f974743de4e75d31059af",
            ],
            response_frame: "000000000000007b044b1525346e23171900000066fb0000000d737061726b5361736c55736572000000104f6a61b075ce7479e23c19652eacb65b0000003c113f974743de4e75d31059af093a7b5aa0fa4105f335b8ba173f53ac97fc90faf7c8411506ba1e73689a5c40c80c7002e672356c8da2baaad6fc829e",
            server_kek: "6107e535a771bf1916fc2e8e2f283f79",
            server_public: "82ba601b25186de4e7baecd7d029e05f1c754b8aca0b46972560768be69c7423",
            shared: "0a732ccc50d00e17a1af7b57e30d91ba4ac258d6a1078e2cb28d5d5d2468de03",
            transcript: "fb0000000d737061726b5361736c557365720000001030368efd1a259d44d166020c50c939f90000003cb171f5cf971ade59325c8c9e938709774527109ca48c7632a4292867261243c5d54cb837124d5629a9d8ed91f3eaa361f8ecb50ef4b2b8884b909e96fb0000000d737061726b5361736c55736572000000104f6a61b075ce7479e23c19652eacb65b0000003c113f974743de4e75d31059af093a7b5aa0fa4105f335b8ba173f53ac97fc90faf7c8411506ba1e73689a5c40c80c7002e672356c8da2baaad6fc829e",
            session_key: "0a732ccc50d00e17a1af7b57e30d91ba4ac258d6a1078e2cb28d5d5d2468de03",
            input_iv: "774b45605a4a35a086f4ec5d0c9321e3",
            output_iv: "c7571bba981f38bcbca1e44da5204090",
            records: &[
                Record {
                    from_client: true,
                    plaintext: "000000000000001a035978d3a8797cae220000000568656c6c6f",
                    wire: "4f5d1fe2ab32f4a25862dc390273513f092513fdbb92bd3a3618",
                    draws: "",
                    envelope_key: "",
                },
                Record {
                    from_client: false,
                    plaintext: "000000000000001a045978d3a8797cae220000000568656c6c6f",
                    wire: "8be5e64545e73c51018a6d0fbc6991361645e0d8a920220f2b9b",
                    draws: "",
                    envelope_key: "",
                },
                Record {
                    from_client: true,
                    plaintext: "000000000000001a0341ace0d5f86dc62e00000005776f726c64",
                    wire: "af5de2cd4d85249874c73c2eb0d12de73643ba6a1315f3b822a4",
                    draws: "",
                    envelope_key: "",
                },
                Record {
                    from_client: false,
                    plaintext: "000000000000001a0441ace0d5f86dc62e00000005776f726c64",
                    wire: "8ff52e6fb1d4f567d80d2a769660a269e6977ff58203321fd955",
                    draws: "",
                    envelope_key: "",
                },
            ],
        }),
    },
    Scenario {
        name: "ctr-v2",
        cipher: Cipher::AesCtr,
        version: EngineVersion::V2,
        client_secret: "rpcenv-test-secret",
        client_draws: [
            "f90adee56e2637c7ad1de3207c753e3176b96a2423bb6741ba7aeac453574b39",
            "44b07eebf234142e207ef9f55a3e9f61",
            "c680ff0ace0f68864aedde92",
        ],
        challenge_frame: "000000000000007b0351b83d8625ab991c00000066fb0000000d737061726b5361736c557365720000001044b07eebf234142e207ef9f55a3e9f610000003cc680ff0ace0f68864aedde9257952edc7bb0a562bb2171478357bb442fc8f3e945e7b17de6e7d76a020f4214bac7e22c27a6ecea2ef3173829516eef",
        client_kek: "323a76cdcd7e7b0518a1107de50d1d7e",
        client_public: "039f2c236471c6a7a5cf850ade338bfaf9b84e0e42b5cf630a6e1884dd16a46d",
        server: Some(ServerSide {
            draws: [
                "6fa34fc8bf1235a68201affc28fa9cbdcd9b0d6be3651ca3671141abba53887a",
                "fbd3129f0e773bc1d2a1677c77da4227",
                "8f0a1d329690012acc99a00c",
            ],
            response_frame: "000000000000007b0451b83d8625ab991c00000066fb0000000d737061726b5361736c5573657200000010fbd3129f0e773bc1d2a1677c77da42270000003c8f0a1d329690012acc99a00c7aa7744ac3e7bec621be2334faa803fdbdbfbf04ac7423c3b711f86b0596bfcbaa27e9c7151dfa78400efd07888fd87d",
            server_kek: "e1a1565101ff59e67989c438606b53f1",
            server_public: "81e503161464f4b65fa5c940ac46a4878c88ce1bebacfab28894afdc2a1a3241",
            shared: "57c947504b71a155bde3ecb435a2aeed89f29a5c134dbbc8d3354172052d3c16",
            transcript: "fb0000000d737061726b5361736c557365720000001044b07eebf234142e207ef9f55a3e9f610000003cc680ff0ace0f68864aedde9257952edc7bb0a562bb2171478357bb442fc8f3e945e7b17de6e7d76a020f4214bac7e22c27a6ecea2ef3173829516eeffb0000000d737061726b5361736c5573657200000010fbd3129f0e773bc1d2a1677c77da42270000003c8f0a1d329690012acc99a00c7aa7744ac3e7bec621be2334faa803fdbdbfbf04ac7423c3b711f86b0596bfcbaa27e9c7151dfa78400efd07888fd87d",
            session_key: "251824d5d27310de484b6124fa2b82f6",
            input_iv: "1bb84f689c6bc86237a2bacaefff7a36",
            output_iv: "94d21410756f393dc5f427ed97d76151",
            records: &[
                Record {
                    from_client: true,
                    plaintext: "000000000000001a037b6d427e66e5ed050000000568656c6c6f",
                    wire: "ba3bb02233e0ed0687e705271f3a47cfe3ceab89c2ac24b9b8ca",
                    draws: "",
                    envelope_key: "",
                },
                Record {
                    from_client: false,
                    plaintext: "000000000000001a047b6d427e66e5ed050000000568656c6c6f",
                    wire: "e5f1e13b60c5288282e45552e03379e385ec4b60fdb56421fa15",
                    draws: "",
                    envelope_key: "",
                },
                Record {
                    from_client: true,
                    plaintext: "000000000000001a037ea462a6dc7585da00000005776f726c64",
                    wire: "1a40d137f1bec886b97dfef7e65cbcf099094ca3059fbbd96512",
                    draws: "",
                    envelope_key: "",
                },
                Record {
                    from_client: false,
                    plaintext: "000000000000001a047ea462a6dc7585da00000005776f726c64",
                    wire: "94889d596627b93d721dfd949ba0cce5960d6530ed85d33d56a0",
                    draws: "",
                    envelope_key: "",
                },
            ],
        }),
    },
    Scenario {
        name: "gcm-v1",
        cipher: Cipher::AesGcm,
        version: EngineVersion::V1,
        client_secret: "rpcenv-test-secret",
        client_draws: [
            "4e09063f1f157fcbebd302d2301b19c0ba375a96070bcdbcba226b4cdba73722",
            "c0f787fe8ed263d75464dd00642be33c",
            "d5f5717695a6113b7144d821",
        ],
        challenge_frame: "000000000000007b037c3900c92b1f9f0200000066fb0000000d737061726b5361736c5573657200000010c0f787fe8ed263d75464dd00642be33c0000003cd5f5717695a6113b7144d8216e9be80dd3a83a21cd61f3efe3949538ca19e62ab7a11c32630fce84ea48cd53a4d402487cf663a81731cd3cfebf88c8",
        client_kek: "c7aa9220bf3c3bce0f52ce6f6d3b5339",
        client_public: "2c53fcad8d7086b72c1065604ce006967abe75cdb86307a3cfb23f510ddeab5f",
        server: Some(ServerSide {
            draws: [
                "3c4cc979422f324f7d294962c0995e2069b7b6f5c6ed347e23e9bbbb3227d639",
                "b1ac8620d1ac17229701f3d1a4fe756f",
                "06bee34090afcf5d67379cdc",
            ],
            response_frame: "000000000000007b047c3900c92b1f9f0200000066fb0000000d737061726b5361736c5573657200000010b1ac8620d1ac17229701f3d1a4fe756f0000003c06bee34090afcf5d67379cdc2d30bd1048860b1d357a93e10db3765fac61814dceff184130591204daab0c72aead94e87fc126e17d382ef13fe1ad26",
            server_kek: "f72d9ef2194786dd8b5b94661af587c1",
            server_public: "71e87940daa292f455cc2069795e530fef3312dbcaf66b71b1b821d4efdbfd6c",
            shared: "da771cd287913f66cfb73d32bb613a7e593cdca1363d404c260234632725b129",
            transcript: "fb0000000d737061726b5361736c5573657200000010c0f787fe8ed263d75464dd00642be33c0000003cd5f5717695a6113b7144d8216e9be80dd3a83a21cd61f3efe3949538ca19e62ab7a11c32630fce84ea48cd53a4d402487cf663a81731cd3cfebf88c8fb0000000d737061726b5361736c5573657200000010b1ac8620d1ac17229701f3d1a4fe756f0000003c06bee34090afcf5d67379cdc2d30bd1048860b1d357a93e10db3765fac61814dceff184130591204daab0c72aead94e87fc126e17d382ef13fe1ad26",
            session_key: "da771cd287913f66cfb73d32bb613a7e593cdca1363d404c260234632725b129",
            input_iv: "20e098a5808a52f95cfd1c06fd20f8e8",
            output_iv: "b7056343cb9d55f1f03d854587c286c6",
            records: &[
                Record {
                    from_client: true,
                    plaintext: "000000000000001a0361efde422fbae5aa0000000568656c6c6f",
                    wire: "000000000000005a282d408fe30d77361477b7bf7f357a94c3bc48d086af4c2fbbe68f1ea1af506d8529c4eed94229c23c78c260b2e37adfcae535f7efb3c4b09f045ae9c971a58fd4cdf77789a4181a206e36189852d8d55026",
                    draws: "2d408fe30d77361477b7bf7f357a94c3bc48d086af4c2fbbe68f1ea1af506d8529c4eed94229c2",
                    envelope_key: "cc63d8373747b98cc8a5d6ab3838f8c7e15696ea9f2e9082fd5d75fe9d64f089",
                },
                Record {
                    from_client: true,
                    plaintext: "000000000000001a03593ffb12a727f2fe00000005776f726c64",
                    wire: "000000000000005a2816266c2a08b71ec98257920fb133d9fec875bb34e3c208c6fd984ff8037275d96c810b51a1f59bfdcc4700c80356edd74336181f9cb8e6c109243527879e761bfefbb1857c50d70f7082e8e02df7dd87bf",
                    draws: "16266c2a08b71ec98257920fb133d9fec875bb34e3c208c6fd984ff8037275d96c810b51a1f59b",
                    envelope_key: "26fe744e9b9a821fada677a2b18a352d29308669f6f276d966c2dd01776990a9",
                },
                Record {
                    from_client: false,
                    plaintext: "000000000000001a0461efde422fbae5aa0000000568656c6c6f",
                    wire: "000000000000005a28393bcf6b1dfecabc4a28de353a8041ee997d7dbcffe85b0025ee1a61cee457086e938b8776b3543a4df0d7032556dbbbb3da6d9a8ef20daec249beca0cc3a4f463a4ea5586191935564c150e979183de15",
                    draws: "393bcf6b1dfecabc4a28de353a8041ee997d7dbcffe85b0025ee1a61cee457086e938b8776b354",
                    envelope_key: "96789adfd54b53a21975b9cdbe54a022e59f9ddae1cf66a27b76418af4fe9a37",
                },
                Record {
                    from_client: false,
                    plaintext: "000000000000001a04593ffb12a727f2fe00000005776f726c64",
                    wire: "000000000000005a282cdd036e9cf13ef42c570157141f2c826a545651326221653044b1b5036cfb5462e2e5fe2334a558487b20123726720df04745d355190c50c4020103f9d5ff023fb056179dc5de57f9b47eace0ca93e7f0",
                    draws: "2cdd036e9cf13ef42c570157141f2c826a545651326221653044b1b5036cfb5462e2e5fe2334a5",
                    envelope_key: "6974417f48f4d8fdda1a76c13a86ab7dafd17c80e736e9b2fd56859245bc6208",
                },
            ],
        }),
    },
    Scenario {
        name: "gcm-v2",
        cipher: Cipher::AesGcm,
        version: EngineVersion::V2,
        client_secret: "rpcenv-test-secret",
        client_draws: [
            "791462ce36a9cf6f8fbea68246aad3db470b4526a1b61e47af77ec5e44d7b57a",
            "dbcd0e8f19fcd1fb856c7ed871439003",
            "5893acff56d9c473bb7f4e03",
        ],
        challenge_frame: "000000000000007b035aa06a120b0e6e0200000066fb0000000d737061726b5361736c5573657200000010dbcd0e8f19fcd1fb856c7ed8714390030000003c5893acff56d9c473bb7f4e0318b63867a49f02e38d1f95b1a3d36034c0da0e4a3733c55ceccf2f7acecbd6cd3145d18ef52cddad6561d3bb659dfaac",
        client_kek: "50f8d6fd5ff520bb9ffacf85ef6f7876",
        client_public: "40c6fbc6aebacc194c54f63f52e517156fc35e7c7fa8f2c4735366c4b173d855",
        server: Some(ServerSide {
            draws: [
                "1768b33bf381da09dca1e902e7d8e007bacff058791d4d5d1bdcbeac44ffeca4",
                "2d07ff50b754974564fa10f79c17d538",
                "4b556f5460f0c8a8881f16c2",
            ],
            response_frame: "000000000000007b045aa06a120b0e6e0200000066fb0000000d737061726b5361736c55736572000000102d07ff50b754974564fa10f79c17d5380000003c4b556f5460f0c8a8881f16c286b253211c6f1481f2f1d8720dbe7873c7aecbec72bb702d7d9243cfa8b595ba5d8c96744138892a0acacca620610eb3",
            server_kek: "eac23aef5a5e9ca51cf23894ce51ee52",
            server_public: "36b549389d2907f5acde5a33ba4faee6f69847250e978a6bfc7de59a6720a568",
            shared: "a5780b3b19fef884857b38f7c67d003726702bccc9518ca696f7d28e310b1d6c",
            transcript: "fb0000000d737061726b5361736c5573657200000010dbcd0e8f19fcd1fb856c7ed8714390030000003c5893acff56d9c473bb7f4e0318b63867a49f02e38d1f95b1a3d36034c0da0e4a3733c55ceccf2f7acecbd6cd3145d18ef52cddad6561d3bb659dfaacfb0000000d737061726b5361736c55736572000000102d07ff50b754974564fa10f79c17d5380000003c4b556f5460f0c8a8881f16c286b253211c6f1481f2f1d8720dbe7873c7aecbec72bb702d7d9243cfa8b595ba5d8c96744138892a0acacca620610eb3",
            session_key: "18404247405b8f9a87746d6ce4297669",
            input_iv: "5142f8a8fc23f82b278ecd6845998567",
            output_iv: "39e42b177aa2f58581e8ba435a021ab6",
            records: &[
                Record {
                    from_client: true,
                    plaintext: "000000000000001a0376a6cff462c1e82c0000000568656c6c6f",
                    wire: "000000000000004a18fd99c3a1f55c21d681f5c7334d296812ec97c882d1e4e87876e867c68cde9cf830595fd4b66a125f0dcf2c3acec7723cd030a9ec7e756bd51067b7d73fb3ed16ca",
                    draws: "fd99c3a1f55c21d681f5c7334d296812ec97c882d1e4e8",
                    envelope_key: "420f81895e7581131ecd9e060e21f5eb",
                },
                Record {
                    from_client: true,
                    plaintext: "000000000000001a034c3f32706ff06ae200000005776f726c64",
                    wire: "000000000000004a18fe8911b0e3de8937801ce39935f5a24d16470dca965b8b733dee2e5b25bb48179d144379cb4b37c2dd22b1df07f67c3e2d9972a35692c162418c37274fd9ab93ae",
                    draws: "fe8911b0e3de8937801ce39935f5a24d16470dca965b8b",
                    envelope_key: "827156d2409ccbf82a565935328d4b43",
                },
                Record {
                    from_client: false,
                    plaintext: "000000000000001a0476a6cff462c1e82c0000000568656c6c6f",
                    wire: "000000000000004a185a779afe341cc44f5dc206ea0c25d2c04f87bccd44359ea13beffc2379e9744cc0e649148e1c791fac312df4e245f846a6182cb80876aba205f81ef680e4ae11a0",
                    draws: "5a779afe341cc44f5dc206ea0c25d2c04f87bccd44359e",
                    envelope_key: "aec606ed45da3eda976a772acab4cedd",
                },
                Record {
                    from_client: false,
                    plaintext: "000000000000001a044c3f32706ff06ae200000005776f726c64",
                    wire: "000000000000004a181021fe1f41c2ad95d0de80ef0121f836d977fe0c39b3b48f1d69f9bb4c19e16559dfe4a4a2c808eb9965dfcd2062f11b43c07144856bfe6eee57952a2266b92851",
                    draws: "1021fe1f41c2ad95d0de80ef0121f836d977fe0c39b3b4",
                    envelope_key: "debf8ce0006de9a51baae556a1866296",
                },
            ],
        }),
    },
    Scenario {
        name: "badsecret",
        cipher: Cipher::AesCtr,
        version: EngineVersion::V1,
        client_secret: "wrong-secret",
        client_draws: [
            "d971e04ff616eebdda6859985c3f1005f17aa7d62657ebe9678c5f3cb0c48dbc",
            "6737e04c6d8d6ab83edb8f967c9d21fe",
            "d5015e3baf9668cefd0b43b2",
        ],
        challenge_frame: "000000000000007b036c747af78a5d7ee700000066fb0000000d737061726b5361736c55736572000000106737e04c6d8d6ab83edb8f967c9d21fe0000003cd5015e3baf9668cefd0b43b26c33088ec1d370451b0cfbd658def40adda3bfc979bf75311b6e9b5ffe5430f4ddd740563b5a48901212c53fa52c8be5",
        client_kek: "324f2bdfc333791dd2d22a3dccd2a67c",
        client_public: "9c10311b7b1788d178b9391867df1e79bb75ccbfde484a3a6b237553ebb76754",
        server: None,
    },
];
