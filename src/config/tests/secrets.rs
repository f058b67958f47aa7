//! Secrets given as the value, `{ env = "VAR" }` or `{ file = "PATH" }`: how they are
//! read and classified, the errors naming key and source, and that no value is ever printed.

use super::*;

/// Environment variables a case sets: (name, value).
type EnvVars<'a> = Vec<(&'a str, &'a str)>;

/// Files a case writes next to the config file: (name, content).
type Files<'a> = Vec<(&'a str, &'a [u8])>;

/// [`MINIMAL`] with the tenant's password written as `form`.
fn with_password(form: &str) -> String {
    MINIMAL.replace("\"hunter2\"", form)
}

fn load_files_ok(toml: &str, env: &[(&str, &str)], files: &[(&str, &[u8])]) -> Config {
    match load_with_files(toml, env, files).0 {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// The error message, and the path of the config file (the files are in its
/// directory).
fn load_files_err(toml: &str, env: &[(&str, &str)], files: &[(&str, &[u8])]) -> (String, PathBuf) {
    match load_with_files(toml, env, files) {
        (Ok(config), _) => panic!("expected an error, got {config:#?}"),
        (Err(e), path) => (e.to_string(), path),
    }
}

/// Asserts that loading fails with a line `<line> (<origin>)`; in both,
/// `{dir}` stands for the directory of the files and `{path}` for the config
/// file.
fn assert_secret_error(
    toml: &str,
    env: &[(&str, &str)],
    files: &[(&str, &[u8])],
    line: &str,
    origin: &str,
) {
    let (message, path) = load_files_err(toml, env, files);
    let dir = path.parent().expect("in the jail").display().to_string();
    let path = path.display().to_string();
    let fill = |s: &str| s.replace("{dir}", &dir).replace("{path}", &path);
    let expected = format!("{} ({})", fill(line), fill(origin));
    assert!(
        message.lines().any(|l| l == expected),
        "expected a line\n  {expected}\ngot\n  {message}"
    );
}

#[test]
fn passwords_may_be_literal_or_read_from_env_or_file() {
    let forms: Vec<(&str, EnvVars, Files)> = vec![
        ("\"hunter2\"", vec![], vec![]),
        (
            "{ env = \"ACME_PASSWORD\" }",
            vec![("ACME_PASSWORD", "hunter2")],
            vec![],
        ),
        (
            "{ file = \"acme.secret\" }",
            vec![],
            vec![("acme.secret", b"hunter2\n")],
        ),
        (
            "{ file = \"{dir}/acme.secret\" }",
            vec![],
            vec![("acme.secret", b"hunter2")],
        ),
    ];
    for (form, env, files) in forms {
        let config = load_files_ok(&with_password(form), &env, &files);
        let tenant = config.tenants[0].effective(&config.defaults);
        assert_eq!(tenant.password.expose(), "hunter2", "{form}");
        assert_eq!(tenant.password.password_kind(), PasswordKind::Plaintext);
        assert_eq!(
            tenant.server_password.as_ref().map(Secret::expose),
            Some("hunter2"),
            "a plaintext password read from {form} also logs in to the server"
        );
    }
}

#[test]
fn file_secrets_lose_exactly_one_trailing_newline() {
    let cases: [(&[u8], &str); 9] = [
        (b"hunter2", "hunter2"),
        (b"hunter2\n", "hunter2"),
        (b"hunter2\r\n", "hunter2"),
        (b"hunter2\n\n", "hunter2\n"),
        (b"hunter2\r\n\r\n", "hunter2\r\n"),
        (b"hunter2\r", "hunter2\r"),
        (b" hunter2 \n", " hunter2 "),
        (b"two\nlines\n", "two\nlines"),
        ("pässwörd\n".as_bytes(), "pässwörd"),
    ];
    for (content, expected) in cases {
        let config = load_files_ok(
            &with_password("{ file = \"acme.secret\" }"),
            &[],
            &[("acme.secret", content)],
        );
        assert_eq!(config.tenants[0].password.expose(), expected, "{content:?}");
    }
}

#[test]
fn env_secrets_are_taken_exactly() {
    for value in ["hunter2\n", " padded ", "007"] {
        let config = load_ok(
            &with_password("{ env = \"ACME_PASSWORD\" }"),
            &[("ACME_PASSWORD", value)],
        );
        assert_eq!(config.tenants[0].password.expose(), value);
    }
}

#[test]
fn every_password_key_takes_a_reference() {
    let toml = format!(
        "{}server_password = {{ env = \"ACME_SERVER_PASSWORD\" }}\n\
         [[admins]]\nuser = \"root\"\npassword = {{ env = \"ADMIN_PASSWORD\" }}\n\
         [[admins]]\nuser = \"ops\"\npassword = {{ file = \"ops.secret\" }}\n",
        with_password("{ file = \"client.secret\" }")
    );
    let config = load_files_ok(
        &toml,
        &[
            ("ACME_SERVER_PASSWORD", "upstream"),
            ("ADMIN_PASSWORD", "root-pw"),
        ],
        &[("client.secret", b"client\n"), ("ops.secret", b"ops-pw\n")],
    );
    let tenant = config.tenants[0].effective(&config.defaults);
    assert_eq!(tenant.password.expose(), "client");
    assert_eq!(
        tenant.server_password.as_ref().map(Secret::expose),
        Some("upstream")
    );
    assert_eq!(config.admins[0].password.expose(), "root-pw");
    assert_eq!(config.admins[1].password.expose(), "ops-pw");
}

#[test]
fn verifiers_and_md5_hashes_from_env_and_file_are_classified() {
    let verifier_file = format!("{VERIFIER}\n");
    let config = load_files_ok(
        &with_password("{ file = \"acme.verifier\" }"),
        &[],
        &[("acme.verifier", verifier_file.as_bytes())],
    );
    let tenant = config.tenants[0].effective(&config.defaults);
    assert_eq!(tenant.password.expose(), VERIFIER);
    assert_eq!(tenant.password.password_kind(), PasswordKind::ScramVerifier);
    assert!(tenant.password.is_well_formed_verifier());
    assert_eq!(
        tenant.server_password, None,
        "a verifier cannot log in to the server"
    );

    let toml = format!(
        "[defaults]\nauth_type = \"md5\"\n{}",
        with_password("{ env = \"ACME_MD5\" }")
    );
    let config = load_ok(
        &toml,
        &[("ACME_MD5", "md5a3556571e93b0d20722ba62be61e8c2d")],
    );
    assert_eq!(
        config.tenants[0].password.password_kind(),
        PasswordKind::Md5Hash
    );
}

#[test]
fn sluice_variables_override_and_give_references() {
    // A literal from SLUICE_ replaces the file's reference, which is not read.
    let config = load_ok(
        &with_password("{ file = \"missing.secret\" }"),
        &[("SLUICE_TENANTS__0__PASSWORD", "from-env")],
    );
    assert_eq!(config.tenants[0].password.expose(), "from-env");

    // A reference from SLUICE_ replaces the file's literal.
    let config = load_ok(
        MINIMAL,
        &[
            ("SLUICE_TENANTS__0__PASSWORD__ENV", "ACME_PASSWORD"),
            ("ACME_PASSWORD", "rotated"),
        ],
    );
    assert_eq!(config.tenants[0].password.expose(), "rotated");
    let config = load_files_ok(
        MINIMAL,
        &[
            ("SLUICE_ADMINS__0__USER", "root"),
            ("SLUICE_ADMINS__0__PASSWORD__FILE", "root.secret"),
        ],
        &[("root.secret", b"root-pw\n")],
    );
    assert_eq!(config.admins[0].password.expose(), "root-pw");
}

#[test]
fn each_load_reads_the_secret_file_again() {
    jailed(|jail| {
        let dir = jail.directory().to_owned();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, with_password("{ file = \"acme.secret\" }")).expect("writable");
        std::fs::write(dir.join("acme.secret"), "first\n").expect("writable");
        let before = Config::load(&path).expect("valid");
        std::fs::write(dir.join("acme.secret"), "second\n").expect("writable");
        let after = Config::load(&path).expect("valid");
        assert_eq!(before.tenants[0].password.expose(), "first");
        assert_eq!(after.tenants[0].password.expose(), "second");
        assert_ne!(
            before.tenants[0].effective(&before.defaults),
            after.tenants[0].effective(&after.defaults),
            "a rotated password changes the tenant, so a reload rebuilds it"
        );

        std::fs::remove_file(dir.join("acme.secret")).expect("removable");
        let err = Config::load(&path).expect_err("the file is gone");
        assert!(err.to_string().contains("cannot read file"), "{err}");
    });
}

#[test]
fn same_value_from_another_source_is_an_equal_secret() {
    let literal = load_ok(MINIMAL, &[]);
    let from_env = load_ok(
        &with_password("{ env = \"ACME_PASSWORD\" }"),
        &[("ACME_PASSWORD", "hunter2")],
    );
    assert_eq!(literal.tenants[0].password, from_env.tenants[0].password);
    assert_eq!(
        literal.tenants[0].effective(&literal.defaults),
        from_env.tenants[0].effective(&from_env.defaults)
    );
}

#[test]
fn unreadable_secrets_are_errors_naming_key_and_source() {
    let in_file = "in {path}";
    let env = "{ env = \"ACME_PASSWORD\" }";
    let file = "{ file = \"acme.secret\" }";
    let too_large = vec![b'a'; 64 * 1024 + 1];
    let cases: Vec<(String, EnvVars, Files, &str)> = vec![
        (
            with_password(env),
            vec![],
            vec![],
            "tenants[0].password: environment variable ACME_PASSWORD is not set",
        ),
        (
            with_password(env),
            vec![("ACME_PASSWORD", "")],
            vec![],
            "tenants[0].password: environment variable ACME_PASSWORD is empty",
        ),
        (
            with_password("{ env = \"\" }"),
            vec![],
            vec![],
            "tenants[0].password: `env` must not be empty",
        ),
        (
            with_password("{ env = \"A=B\" }"),
            vec![],
            vec![],
            "tenants[0].password: \"A=B\" is not a valid environment variable name",
        ),
        (
            with_password(file),
            vec![],
            vec![],
            "tenants[0].password: cannot read file {dir}/acme.secret: \
             No such file or directory (os error 2)",
        ),
        (
            with_password("{ file = \"{dir}/missing\" }"),
            vec![],
            vec![],
            "tenants[0].password: cannot read file {dir}/missing: \
             No such file or directory (os error 2)",
        ),
        (
            with_password("{ file = \"{dir}\" }"),
            vec![],
            vec![],
            "tenants[0].password: cannot read file {dir}: Is a directory (os error 21)",
        ),
        (
            with_password(file),
            vec![],
            vec![("acme.secret", b"")],
            "tenants[0].password: file {dir}/acme.secret is empty",
        ),
        (
            with_password(file),
            vec![],
            vec![("acme.secret", b"\r\n")],
            "tenants[0].password: file {dir}/acme.secret is empty",
        ),
        (
            with_password(file),
            vec![],
            vec![("acme.secret", b"hunter\xff2")],
            "tenants[0].password: file {dir}/acme.secret is not valid UTF-8",
        ),
        (
            with_password(file),
            vec![],
            vec![("acme.secret", &too_large)],
            "tenants[0].password: file {dir}/acme.secret is larger than 65536 bytes",
        ),
        (
            with_password("{ file = \"\" }"),
            vec![],
            vec![],
            "tenants[0].password: `file` must not be empty",
        ),
        (
            with_password("{ envv = \"ACME_PASSWORD\" }"),
            vec![],
            vec![],
            "tenants[0].password.envv: unknown key, expected `env` or `file`",
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\", value = \"hunter2\" }"),
            vec![("ACME_PASSWORD", "x")],
            vec![],
            "tenants[0].password.value: unknown key, expected `env` or `file`",
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\", file = \"acme.secret\" }"),
            vec![],
            vec![],
            "tenants[0].password: give either `env` or `file`, not both",
        ),
        (
            with_password("{}"),
            vec![],
            vec![],
            "tenants[0].password: a table must name where the password is: \
             { env = \"VARIABLE\" } or { file = \"PATH\" }",
        ),
        (
            format!("{MINIMAL}server_password = {{ env = \"UPSTREAM\" }}\n"),
            vec![],
            vec![],
            "tenants[0].server_password: environment variable UPSTREAM is not set",
        ),
        (
            format!(
                "{MINIMAL}[[admins]]\nuser = \"root\"\npassword = {{ file = \"root.secret\" }}\n"
            ),
            vec![],
            vec![],
            "admins[0].password: cannot read file {dir}/root.secret: \
             No such file or directory (os error 2)",
        ),
        (
            format!(
                "{MINIMAL}\n[[tenants]]\ndatabase = \"b\"\nuser = \"b\"\ncluster = \"main\"\n\
                 password = {{ env = \"ACME_PASSWORD\" }}\n"
            ),
            vec![],
            vec![],
            "tenants[1].password: environment variable ACME_PASSWORD is not set",
        ),
    ];
    for (toml, env, files, line) in cases {
        assert_secret_error(&toml, &env, &files, line, in_file);
    }

    // The largest file accepted.
    let largest = vec![b'a'; 64 * 1024];
    let config = load_files_ok(&with_password(file), &[], &[("acme.secret", &largest)]);
    assert_eq!(config.tenants[0].password.expose().len(), 64 * 1024);
}

#[test]
fn references_given_by_sluice_variables_name_that_variable() {
    assert_secret_error(
        MINIMAL,
        &[("SLUICE_TENANTS__0__PASSWORD__ENV", "ACME_PASSWORD")],
        &[],
        "tenants[0].password: environment variable ACME_PASSWORD is not set",
        "from environment variable SLUICE_TENANTS__0__PASSWORD__ENV",
    );
    assert_secret_error(
        MINIMAL,
        &[(
            "SLUICE_TENANTS__0__SERVER_PASSWORD__FILE",
            "upstream.secret",
        )],
        &[("upstream.secret", b"\n")],
        "tenants[0].server_password: file {dir}/upstream.secret is empty",
        "from environment variable SLUICE_TENANTS__0__SERVER_PASSWORD__FILE",
    );
    assert_secret_error(
        MINIMAL,
        &[("SLUICE_TENANTS__0__PASSWORD__ENVV", "ACME_PASSWORD")],
        &[],
        "tenants[0].password.envv: unknown key, expected `env` or `file`",
        "from environment variable SLUICE_TENANTS__0__PASSWORD__ENVV",
    );
}

#[test]
fn rules_broken_by_values_read_from_references_name_the_reference() {
    assert_secret_error(
        &format!("{MINIMAL}server_password = {{ env = \"UPSTREAM\" }}\n"),
        &[("UPSTREAM", VERIFIER)],
        &[],
        "tenants[0].server_password: must be the plaintext password: a SCRAM verifier cannot log in",
        "value from environment variable UPSTREAM, in {path}",
    );
    assert_secret_error(
        &with_password("{ file = \"acme.secret\" }"),
        &[],
        &[("acme.secret", b"md5a3556571e93b0d20722ba62be61e8c2d\n")],
        "tenants[0].password: an md5 hash cannot check a SCRAM-SHA-256 login (auth_type is \
         \"scram-sha-256\"); give the plaintext password or change auth_type",
        "value from file {dir}/acme.secret, in {path}",
    );
    assert_secret_error(
        &format!("{MINIMAL}[[admins]]\nuser = \"root\"\npassword = {{ file = \"root.secret\" }}\n"),
        &[],
        &[("root.secret", b"SCRAM-SHA-256$4096:c2FsdA==\n")],
        "admins[0].password: starts like a SCRAM-SHA-256 verifier but is not \
         SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
        "value from file {dir}/root.secret, in {path}",
    );
    assert_secret_error(
        MINIMAL,
        &[
            ("SLUICE_TENANTS__0__SERVER_PASSWORD__ENV", "UPSTREAM"),
            ("UPSTREAM", VERIFIER),
        ],
        &[],
        "tenants[0].server_password: must be the plaintext password: a SCRAM verifier cannot log in",
        "value from environment variable UPSTREAM, \
         from environment variable SLUICE_TENANTS__0__SERVER_PASSWORD__ENV",
    );
}

#[test]
fn unreadable_secrets_and_broken_rules_are_reported_together() {
    let toml = format!(
        "[defaults]\npool_size = 0\n{}server_password = {{ file = \"upstream.secret\" }}\n\
         [[admins]]\nuser = \"root\"\npassword = {{ env = \"ADMIN_PASSWORD\" }}\n",
        with_password("{ env = \"ACME_PASSWORD\" }")
    );
    let (message, _) = load_files_err(&toml, &[], &[]);
    assert_eq!(message.lines().count(), 4, "{message}");
    for start in [
        "admins[0].password: environment variable ADMIN_PASSWORD is not set",
        "tenants[0].password: environment variable ACME_PASSWORD is not set",
        "tenants[0].server_password: cannot read file ",
        "defaults.pool_size: must be at least 1",
    ] {
        assert!(
            message.lines().any(|line| line.starts_with(start)),
            "{start}\nnot in\n{message}"
        );
    }
}

#[test]
fn secrets_from_env_and_file_are_never_printed() {
    let toml = format!(
        "{}server_password = {{ file = \"upstream.secret\" }}\n\
         [[admins]]\nuser = \"root\"\npassword = {{ env = \"ADMIN_PASSWORD\" }}\n",
        with_password("{ env = \"ACME_PASSWORD\" }")
    );
    let config = load_files_ok(
        &toml,
        &[
            ("ACME_PASSWORD", "client-pw"),
            ("ADMIN_PASSWORD", "admin-pw"),
        ],
        &[("upstream.secret", b"upstream-pw\n")],
    );
    let tenant = config.tenants[0].effective(&config.defaults);
    for text in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{tenant:?}"),
        config.tenants[0].password.to_string(),
        config.admins[0].password.to_string(),
        format!("{}", tenant.server_password.as_ref().expect("set")),
    ] {
        for secret in ["client-pw", "upstream-pw", "admin-pw"] {
            assert!(!text.contains(secret), "{secret} printed in:\n{text}");
        }
        assert!(text.contains("<redacted>"), "{text}");
    }
    assert_eq!(format!("{:?}", config.admins[0].password), "<redacted>");
}

#[test]
fn failing_loads_never_print_secret_values() {
    // Every secret below contains "leak"; every load fails. Some fail on the
    // secret itself, others elsewhere with secrets already read.
    let md5 = "md5a3556571e93b0d20722ba62be61e8c2d";
    let big = "leak".repeat(20_000);
    let cases: Vec<(String, EnvVars, Files)> = vec![
        (
            with_password("{ file = \"acme.secret\" }"),
            vec![],
            vec![("acme.secret", b"SCRAM-SHA-256$4096:leak\n")],
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\" }"),
            vec![("ACME_PASSWORD", "SCRAM-SHA-256$leak")],
            vec![],
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\" }"),
            vec![("ACME_PASSWORD", md5)],
            vec![],
        ),
        (
            format!("{MINIMAL}server_password = {{ file = \"upstream.secret\" }}\n"),
            vec![],
            vec![("upstream.secret", VERIFIER.as_bytes())],
        ),
        (
            with_password("{ file = \"acme.secret\" }"),
            vec![],
            vec![("acme.secret", big.as_bytes())],
        ),
        (
            with_password("{ file = \"acme.secret\" }"),
            vec![],
            vec![("acme.secret", b"leak\xff\n")],
        ),
        (
            with_password("{ env = \"ACME_PASSWORD\", file = \"acme.secret\" }"),
            vec![("ACME_PASSWORD", "leak-env")],
            vec![("acme.secret", b"leak-file")],
        ),
        (
            format!(
                "[defaults]\npool_size = 0\n{}server_password = {{ env = \"UPSTREAM\" }}\n\
                 [[admins]]\nuser = \"root\"\npassword = {{ file = \"root.secret\" }}\n",
                with_password("{ file = \"acme.secret\" }")
            ),
            vec![("UPSTREAM", "leak-upstream")],
            vec![
                ("acme.secret", b"leak-client\n"),
                ("root.secret", b"leak-admin\n"),
            ],
        ),
        (
            MINIMAL.replace("cluster = \"main\"", "cluster = \"x\""),
            vec![
                ("SLUICE_TENANTS__0__PASSWORD__ENV", "ACME_PASSWORD"),
                ("ACME_PASSWORD", "leak-via-sluice"),
            ],
            vec![],
        ),
        (
            MINIMAL.to_owned(),
            vec![("SLUICE_TENANTS__0__SERVER_PASSWORD", "SCRAM-SHA-256$leak")],
            vec![],
        ),
    ];
    for (toml, env, files) in cases {
        let (result, _) = load_with_files(&toml, &env, &files);
        let err = result.expect_err("every case fails");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("leak"), "a secret in:\n{text}");
            assert!(!text.contains(md5), "a secret in:\n{text}");
            assert!(!text.contains("gzLfRG"), "a secret in:\n{text}");
        }
    }
}
