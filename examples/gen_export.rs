//! Generates a realistic `Get-Mailbox -InactiveMailboxOnly` export for benchmarks.
//!
//! ```text
//! cargo run --release --example gen_export -- COUNT OUTPUT [--format json|csv] [--narrow]
//! ```
//!
//! `json` (the default) writes what Windows PowerShell 5.1 writes for
//! `Get-Mailbox -InactiveMailboxOnly | ConvertTo-Json`: an array of objects with about
//! 140 properties each, `\/Date(ms)\/` dates, two spaces after each colon and `'`, `<`,
//! `>`, `&` escaped as `\u0027` and so on. `csv` writes `Export-Csv` output with its
//! `#TYPE` line, multi-valued properties joined by spaces and dates as `M/d/yyyy h:mm:ss
//! AM`. TotalItemSize and ItemCount (Get-MailboxStatistics properties) and LicenseType
//! are included as an administrator's calculated properties would add them.
//!
//! `--narrow` keeps only the 19 properties the inventory reads ([`NARROW`]), as an
//! administrator's `Select-Object` before `ConvertTo-Json` or `Export-Csv` would: the
//! shape of export the original Python design of the inventory was measured with.
//!
//! The output is deterministic: the same COUNT always gives the same file. Every record
//! has a distinct ExchangeGuid, DisplayName and PrimarySmtpAddress. Display names are
//! `First Last` (100 × 100 combinations) with a number appended from the 10,001st record
//! on, so searching for one full name such as `grace hopper` matches COUNT / 10,000
//! records (rounded up).

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

const FIRST: [&str; 100] = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Dennis",
    "Ken",
    "Frances",
    "John",
    "Radia",
    "Tim",
    "Vint",
    "Bjarne",
    "Guido",
    "Linus",
    "Anita",
    "Hedy",
    "Claude",
    "Katherine",
    "Dorothy",
    "Mary",
    "Niklaus",
    "Leslie",
    "Tony",
    "Robin",
    "Adele",
    "Jean",
    "Betty",
    "Ruth",
    "Marlyn",
    "Kathleen",
    "Sophie",
    "Carol",
    "Shafi",
    "Silvio",
    "Whitfield",
    "Martin",
    "Ron",
    "Adi",
    "Len",
    "Ivan",
    "Douglas",
    "Butler",
    "Ted",
    "Seymour",
    "Marvin",
    "Herbert",
    "Allen",
    "Peter",
    "Andrew",
    "Judea",
    "Yoshua",
    "Geoffrey",
    "Yann",
    "Fei-Fei",
    "Daphne",
    "Cynthia",
    "Shwetak",
    "Jeannette",
    "Lynn",
    "Susan",
    "Monica",
    "Lixia",
    "Deborah",
    "Mendel",
    "Elaine",
    "Evelyn",
    "Irene",
    "Joan",
    "Karen",
    "Lucy",
    "Nancy",
    "Olga",
    "Paula",
    "Rita",
    "Sara",
    "Tina",
    "Ursula",
    "Vera",
    "Wendy",
    "Xenia",
    "Yvonne",
    "Zoe",
    "Aaron",
    "Brian",
    "Colin",
    "Derek",
    "Ethan",
    "Felix",
    "Gavin",
    "Hugo",
    "Isaac",
    "Jonas",
    "Kevin",
    "Liam",
    "Mateo",
    "Noah",
    "Oscar",
];

const LAST: [&str; 100] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Hamilton",
    "Ritchie",
    "Thompson",
    "Allen",
    "McCarthy",
    "Perlman",
    "Berners-Lee",
    "Cerf",
    "Stroustrup",
    "van Rossum",
    "Torvalds",
    "Borg",
    "Lamarr",
    "Shannon",
    "Johnson",
    "Vaughan",
    "Jackson",
    "Wirth",
    "Lamport",
    "Hoare",
    "Milner",
    "Goldberg",
    "Sammet",
    "Holberton",
    "Teitelbaum",
    "Wescoff",
    "Antonelli",
    "Wilson",
    "Shaw",
    "Goldwasser",
    "Micali",
    "Diffie",
    "Hellman",
    "Rivest",
    "Shamir",
    "Adleman",
    "Sutherland",
    "Engelbart",
    "Lampson",
    "Codd",
    "Papert",
    "Minsky",
    "Simon",
    "Newell",
    "Naur",
    "Yao",
    "Pearl",
    "Bengio",
    "Hinton",
    "LeCun",
    "Li",
    "Koller",
    "Dwork",
    "Patel",
    "Wing",
    "Conway",
    "Kare",
    "Lam",
    "Zhang",
    "Estrin",
    "Rosenblum",
    "Rich",
    "Berezin",
    "Greif",
    "Clarke",
    "Sparck Jones",
    "Suchman",
    "Lynch",
    "Petersen",
    "Hewitt",
    "Levi",
    "Murphy",
    "Nakamura",
    "O'Brien",
    "Garcia",
    "Schmidt",
    "Dubois",
    "Rossi",
    "Novak",
    "Kowalski",
    "Jensen",
    "Andersson",
    "Virtanen",
    "Horvat",
    "Papadopoulos",
    "Costa",
    "Fernandes",
    "Yilmaz",
    "Kim",
    "Nguyen",
    "Sato",
    "Okafor",
    "Mensah",
    "Haddad",
];

/// (company, SMTP domain)
const COMPANIES: [(&str, &str); 6] = [
    ("Contoso Ltd", "contoso.com"),
    ("Fabrikam Inc", "fabrikam.com"),
    ("Northwind Traders", "northwindtraders.com"),
    ("Tailspin Toys", "tailspintoys.com"),
    ("Woodgrove Bank", "woodgrovebank.com"),
    ("Adventure Works", "adventure-works.com"),
];

const DEPARTMENTS: [&str; 8] = [
    "Finance",
    "Sales",
    "R&D",
    "Legal",
    "Human Resources",
    "IT",
    "Operations",
    "Marketing",
];

const OFFICES: [&str; 6] = [
    "Seattle",
    "London",
    "Munich",
    "Paris",
    "Singapore",
    "São Paulo",
];

const LICENSES: [&str; 3] = ["E3", "E5", "F3"];

const TENANT: &str = "contoso.onmicrosoft.com";

/// SplitMix64: small, fast and good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// 32 lowercase hex digits.
    fn hex32(&mut self) -> String {
        format!("{:016x}{:016x}", self.next(), self.next())
    }

    fn guid(&mut self) -> String {
        hyphenate(&self.hex32())
    }
}

fn hyphenate(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A property value as Get-Mailbox returns it.
enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    /// Milliseconds since the Unix epoch.
    Date(i64),
    List(Vec<String>),
}

fn s(v: impl Into<String>) -> Val {
    Val::Str(v.into())
}

/// "3.233 GB (3,471,471,173 bytes)"
fn byte_quantity(bytes: u64) -> String {
    let units = [
        ("B", 1u64),
        ("KB", 1 << 10),
        ("MB", 1 << 20),
        ("GB", 1 << 30),
    ];
    let (unit, size) = units
        .iter()
        .rev()
        .find(|(_, size)| bytes >= *size)
        .copied()
        .unwrap_or(("B", 1));
    let digits = bytes.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let amount = if unit == "B" {
        bytes.to_string()
    } else {
        let v = bytes as f64 / size as f64;
        let t = format!("{v:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    format!("{amount} {unit} ({grouped} bytes)")
}

fn quota(gb: u64) -> String {
    byte_quantity(gb << 30)
}

/// One inactive mailbox, in Get-Mailbox property order.
fn record(i: u64, rng: &mut Rng) -> Vec<(&'static str, Val)> {
    let combo = i % 10_000;
    let round = i / 10_000;
    let f = (combo % 100) as usize;
    let l = ((combo / 100 + 31 * (combo % 100)) % 100) as usize;
    let (first, last) = (FIRST[f], LAST[l]);
    let display = if round == 0 {
        format!("{first} {last}")
    } else {
        format!("{first} {last} {}", round + 1)
    };
    let local_last: String = last
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let mut local = format!("{}.{}", first.to_lowercase(), local_last.to_lowercase());
    if round > 0 {
        write!(local, "{}", round + 1).unwrap();
    }
    let (company, domain) = COMPANIES[rng.below(COMPANIES.len() as u64) as usize];
    let smtp = format!("{local}@{domain}");
    let alias: String = local.chars().filter(|c| *c != '.').take(20).collect();

    // The last 48 bits of the ExchangeGuid are the record number times an odd constant
    // modulo 2^48, so they differ between records.
    let mut guid_hex = rng.hex32();
    guid_hex.replace_range(12..13, "4");
    let variant = ["8", "9", "a", "b"][(i % 4) as usize];
    guid_hex.replace_range(16..17, variant);
    guid_hex.replace_range(
        20..32,
        &format!(
            "{:012x}",
            i.wrapping_mul(0x9e37_79b9_7f4b) & 0xffff_ffff_ffff
        ),
    );
    let exchange_guid = hyphenate(&guid_hex);
    let object_id = rng.guid();
    let archive_guid = rng.guid();
    let name = format!("{}{}", &guid_hex[..8], &alias);

    let created = 1_420_070_400_000 + rng.below(8 * 365 * 86_400_000) as i64; // 2015..2023
    let deleted = 1_640_995_200_000 + rng.below(3 * 365 * 86_400_000) as i64; // 2022..2025
    let changed = deleted + rng.below(90 * 86_400_000) as i64;

    let mut holds = Vec::new();
    if rng.chance(35) {
        holds.push(format!("UniH{}", rng.hex32()));
    }
    if rng.chance(60) {
        holds.push(format!("mbx{}:1", rng.hex32()));
    }
    if rng.chance(15) {
        holds.push(format!("-mbx{}:1", rng.hex32()));
    }
    if rng.chance(10) {
        holds.push(rng.hex32());
    }
    if rng.chance(5) {
        holds.push(format!("skp{}:3", rng.hex32()));
    }
    let litigation = rng.chance(40);
    let archive = rng.chance(30);
    let auto_expanding = archive && rng.chance(10);
    let size = rng.below(50 << 30);
    let items = size / (60_000 + rng.below(40_000));
    let license = rng.pick(&LICENSES);
    let department = rng.pick(&DEPARTMENTS);
    let office = rng.pick(&OFFICES);
    let dn = format!(
        "CN={name},OU=Soft Deleted Objects,OU={TENANT},OU=Microsoft Exchange Hosted Organizations,DC=EURPR01A001,DC=PROD,DC=OUTLOOK,DC=COM"
    );
    let db = format!("EURPR01DG{:03}-db{:03}", rng.below(1000), rng.below(1000));
    let server = format!("am{}pr01mb{:04}", rng.below(9) + 1, rng.below(10_000));

    let mut emails = vec![
        format!("SMTP:{smtp}"),
        format!("smtp:{alias}@{TENANT}"),
        format!("smtp:{alias}@contoso.mail.onmicrosoft.com"),
    ];
    if rng.chance(50) {
        emails.push(format!("smtp:{}@{domain}", alias.to_uppercase()));
    }
    emails.push(format!(
        "X500:/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn={}-{alias}",
        &guid_hex[..32]
    ));
    if rng.chance(30) {
        emails.push(format!("SPO:SPO_{}@SPO_{}", rng.guid(), rng.guid()));
    }

    let mut v: Vec<(&'static str, Val)> = vec![
        ("RunspaceId", s(rng.guid())),
        ("Database", s(db.clone())),
        ("IsMonitoringMailbox", Val::Bool(false)),
        ("MessageCopyForSentAsEnabled", Val::Bool(false)),
        ("MessageCopyForSendOnBehalfEnabled", Val::Bool(false)),
        ("MailboxProvisioningPreferences", Val::List(Vec::new())),
        ("UseDatabaseRetentionDefaults", Val::Bool(false)),
        ("RetainDeletedItemsUntilBackup", Val::Bool(false)),
        ("DeliverToMailboxAndForward", Val::Bool(false)),
        ("LitigationHoldEnabled", Val::Bool(litigation)),
        ("SingleItemRecoveryEnabled", Val::Bool(true)),
        ("RetentionHoldEnabled", Val::Bool(false)),
        ("RetentionComment", s("")),
        ("RetentionUrl", s("")),
        (
            "LitigationHoldDate",
            if litigation {
                Val::Date(created + 86_400_000)
            } else {
                Val::Null
            },
        ),
        (
            "LitigationHoldOwner",
            s(if litigation {
                format!("admin@{TENANT}")
            } else {
                String::new()
            }),
        ),
        ("ElcProcessingDisabled", Val::Bool(false)),
        ("ComplianceTagHoldApplied", Val::Bool(rng.chance(10))),
        ("DelayHoldApplied", Val::Bool(rng.chance(5))),
        ("DelayReleaseHoldApplied", Val::Bool(rng.chance(3))),
        ("InactiveMailboxRetireTime", Val::Null),
        ("LitigationHoldDuration", s("Unlimited")),
        ("RetentionPolicy", s("Default MRM Policy")),
        ("CalendarRepairDisabled", Val::Bool(false)),
        ("ExchangeGuid", s(exchange_guid)),
        (
            "MailboxLocations",
            Val::List(vec![format!(
                "1;{};Primary;{TENANT};{}",
                hyphenate(&guid_hex),
                rng.guid()
            )]),
        ),
        (
            "ExchangeSecurityDescriptor",
            s("System.Security.AccessControl.RawSecurityDescriptor"),
        ),
        ("AdminDisplayVersion", s("Version 15.20 (Build 7741.18)")),
        ("ExternalOofOptions", s("External")),
        ("ForwardingAddress", Val::Null),
        ("ForwardingSmtpAddress", Val::Null),
        ("RetainDeletedItemsFor", s("14.00:00:00")),
        ("IsMailboxEnabled", Val::Bool(true)),
        ("Languages", Val::List(vec!["en-US".into()])),
        ("OfflineAddressBook", Val::Null),
        ("ProhibitSendQuota", s(quota(99))),
        ("ProhibitSendReceiveQuota", s(quota(100))),
        ("RecoverableItemsQuota", s(quota(100))),
        ("RecoverableItemsWarningQuota", s(quota(90))),
        ("CalendarLoggingQuota", s(quota(6))),
        (
            "ProtocolSettings",
            Val::List(vec!["RemotePowerShell§1".into()]),
        ),
        ("RecipientLimits", s("500")),
        ("IsResource", Val::Bool(false)),
        ("IsLinked", Val::Bool(false)),
        ("IsShared", Val::Bool(false)),
        (
            "SamAccountName",
            s(format!("$K{:x}-{}", rng.below(1 << 20), &guid_hex[..12])),
        ),
        (
            "ServerLegacyDN",
            s(format!(
                "/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Configuration/cn=Servers/cn={}",
                server.to_uppercase()
            )),
        ),
        ("ServerName", s(server)),
        ("UseDatabaseQuotaDefaults", Val::Bool(false)),
        ("IssueWarningQuota", s(quota(98))),
        ("RulesQuota", s("256 KB (262,144 bytes)")),
        ("Office", s(office)),
        ("UserPrincipalName", s(smtp.clone())),
        ("NetID", s(format!("10032{:011X}", rng.below(1 << 40)))),
        ("WindowsLiveID", s(smtp.clone())),
        ("MicrosoftOnlineServicesID", s(smtp.clone())),
        ("RoleAssignmentPolicy", s("Default Role Assignment Policy")),
        ("SharingPolicy", s("Default Sharing Policy")),
        (
            "MailboxPlan",
            s("ExchangeOnlineEnterprise-7f4d1fe0-3b1a-4e84-8ee2-1d0d3a5c1b2f"),
        ),
        ("ArchiveDatabase", if archive { s(db) } else { Val::Null }),
        (
            "ArchiveGuid",
            s(if archive {
                archive_guid
            } else {
                "00000000-0000-0000-0000-000000000000".into()
            }),
        ),
        (
            "ArchiveName",
            Val::List(if archive {
                vec![format!("In-Place Archive -{display}")]
            } else {
                Vec::new()
            }),
        ),
        ("ArchiveQuota", s(quota(100))),
        ("ArchiveWarningQuota", s(quota(90))),
        ("ArchiveStatus", s(if archive { "Active" } else { "None" })),
        ("ArchiveState", s(if archive { "Local" } else { "None" })),
        ("AutoExpandingArchiveEnabled", Val::Bool(auto_expanding)),
        ("RemoteRecipientType", s("None")),
        ("AuditEnabled", Val::Bool(true)),
        ("AuditLogAgeLimit", s("90.00:00:00")),
        (
            "AuditAdmin",
            Val::List(
                [
                    "Update",
                    "MoveToDeletedItems",
                    "SoftDelete",
                    "HardDelete",
                    "SendAs",
                    "SendOnBehalf",
                    "Create",
                    "UpdateFolderPermissions",
                    "UpdateInboxRules",
                    "UpdateCalendarDelegation",
                    "ApplyRecord",
                    "MailItemsAccessed",
                    "Send",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ),
        (
            "AuditDelegate",
            Val::List(
                [
                    "Update",
                    "MoveToDeletedItems",
                    "SoftDelete",
                    "HardDelete",
                    "SendAs",
                    "SendOnBehalf",
                    "Create",
                    "UpdateFolderPermissions",
                    "UpdateInboxRules",
                    "ApplyRecord",
                    "MailItemsAccessed",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ),
        (
            "AuditOwner",
            Val::List(
                [
                    "Update",
                    "MoveToDeletedItems",
                    "SoftDelete",
                    "HardDelete",
                    "UpdateFolderPermissions",
                    "UpdateInboxRules",
                    "UpdateCalendarDelegation",
                    "ApplyRecord",
                    "MailItemsAccessed",
                    "Send",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ),
        (
            "DefaultAuditSet",
            Val::List(["Admin", "Delegate", "Owner"].map(String::from).to_vec()),
        ),
        ("WhenMailboxCreated", Val::Date(created)),
        ("UsageLocation", s("United States")),
        ("IsSoftDeletedByRemove", Val::Bool(true)),
        ("IsSoftDeletedByDisable", Val::Bool(false)),
        ("IsInactiveMailbox", Val::Bool(true)),
        ("WhenSoftDeleted", Val::Date(deleted)),
        ("InPlaceHolds", Val::List(holds)),
        ("AccountDisabled", Val::Bool(true)),
        ("StsRefreshTokensValidFrom", Val::Date(deleted)),
        ("Alias", s(alias.clone())),
        (
            "OrganizationalUnit",
            s(format!(
                "EURPR01A001.prod.outlook.com/Microsoft Exchange Hosted Organizations/{TENANT}"
            )),
        ),
    ];
    for n in 1..=15 {
        let name: &'static str = [
            "CustomAttribute1",
            "CustomAttribute2",
            "CustomAttribute3",
            "CustomAttribute4",
            "CustomAttribute5",
            "CustomAttribute6",
            "CustomAttribute7",
            "CustomAttribute8",
            "CustomAttribute9",
            "CustomAttribute10",
            "CustomAttribute11",
            "CustomAttribute12",
            "CustomAttribute13",
            "CustomAttribute14",
            "CustomAttribute15",
        ][n - 1];
        let value = match n {
            1 => company.to_string(),
            2 => department.to_string(),
            7 => format!("EMP{:06}", rng.below(1_000_000)),
            _ => String::new(),
        };
        v.push((name, s(value)));
    }
    v.extend([
        ("Department", s(department)),
        ("DisplayName", s(display.clone())),
        ("EmailAddresses", Val::List(emails)),
        ("GrantSendOnBehalfTo", Val::List(Vec::new())),
        ("ExternalDirectoryObjectId", s("")),
        ("HiddenFromAddressListsEnabled", Val::Bool(true)),
        ("LegacyExchangeDN", s(format!("/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn={}-{alias}", &guid_hex[..32]))),
        ("MaxSendSize", s("35 MB (36,700,160 bytes)")),
        ("MaxReceiveSize", s("36 MB (37,748,736 bytes)")),
        ("ModerationEnabled", Val::Bool(false)),
        ("PoliciesIncluded", Val::List(vec![rng.guid(), "{26491cfc-9e50-4857-861b-0cb8df22b5d7}".into()])),
        ("EmailAddressPolicyEnabled", Val::Bool(false)),
        ("PrimarySmtpAddress", s(smtp.clone())),
        ("RecipientType", s("UserMailbox")),
        ("RecipientTypeDetails", s("UserMailbox")),
        ("RejectMessagesFrom", Val::List(Vec::new())),
        ("RequireSenderAuthenticationEnabled", Val::Bool(false)),
        ("SendModerationNotifications", s("Always")),
        ("UMDtmfMap", Val::List(vec![format!("emailAddress:{}", rng.below(1 << 40)), format!("lastNameFirstName:{}", rng.below(1 << 40))])),
        ("WindowsEmailAddress", s(smtp)),
        ("Identity", s(format!("Soft Deleted Objects\\{name}"))),
        ("ExchangeVersion", s("0.20 (15.0.0.0)")),
        ("Name", s(name)),
        ("DistinguishedName", s(dn)),
        ("ObjectCategory", s("EURPR01A001.prod.outlook.com/Configuration/Schema/Person")),
        ("ObjectClass", Val::List(["top", "person", "organizationalPerson", "user"].map(String::from).to_vec())),
        ("WhenChanged", Val::Date(changed)),
        ("WhenCreated", Val::Date(created)),
        ("ExchangeObjectId", s(object_id.clone())),
        ("OrganizationId", s(format!("EURPR01A001.prod.outlook.com/Microsoft Exchange Hosted Organizations/{TENANT} - EURPR01A001.prod.outlook.com/ConfigurationUnits/{TENANT}/Configuration"))),
        ("Id", s(format!("Soft Deleted Objects\\{}", &guid_hex[..8]))),
        ("Guid", s(object_id)),
        ("OriginatingServer", s("AM0PR01A001DC02.EURPR01A001.prod.outlook.com")),
        ("ObjectState", s("Unchanged")),
        ("TotalItemSize", s(byte_quantity(size))),
        ("ItemCount", Val::Int(items as i64)),
        ("LicenseType", s(license)),
    ]);
    v
}

/// A JSON string as Windows PowerShell 5.1's ConvertTo-Json writes it.
fn json_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\'' => out.push_str("\\u0027"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json_record(out: &mut String, rec: &[(&str, Val)], last: bool) {
    out.push_str("    {\n");
    for (i, (name, val)) in rec.iter().enumerate() {
        out.push_str("        ");
        json_str(out, name);
        out.push_str(":  ");
        match val {
            Val::Null => out.push_str("null"),
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Val::Int(n) => write!(out, "{n}").unwrap(),
            Val::Str(t) => json_str(out, t),
            Val::Date(ms) => write!(out, "\"\\/Date({ms})\\/\"").unwrap(),
            Val::List(items) => {
                // PowerShell 5.1 aligns array items under the opening bracket.
                let pad = " ".repeat(8 + name.len() + 2 + 3 + 4);
                out.push_str("[\n");
                for (j, item) in items.iter().enumerate() {
                    out.push_str(&pad);
                    out.push_str("    ");
                    json_str(out, item);
                    if j + 1 < items.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                if items.is_empty() {
                    out.push('\n');
                }
                out.push_str(&pad);
                out.push(']');
            }
        }
        if i + 1 < rec.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str(if last { "    }\n" } else { "    },\n" });
}

/// `M/d/yyyy h:mm:ss AM`, as Export-Csv writes dates in the en-US culture.
fn csv_date(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let secs = ms.rem_euclid(86_400_000) / 1000;
    let (y, m, d) = imm_daemon::time::civil_from_days(days);
    let (h, min, sec) = (secs / 3600, secs / 60 % 60, secs % 60);
    let (h12, ampm) = match h {
        0 => (12, "AM"),
        1..=11 => (h, "AM"),
        12 => (12, "PM"),
        _ => (h - 12, "PM"),
    };
    format!("{m}/{d}/{y} {h12}:{min:02}:{sec:02} {ampm}")
}

fn csv_cell(out: &mut String, val: &Val) {
    let text = match val {
        Val::Null => String::new(),
        Val::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Val::Int(n) => n.to_string(),
        Val::Str(t) => t.clone(),
        Val::Date(ms) => csv_date(*ms),
        Val::List(items) => items.join(" "),
    };
    out.push('"');
    out.push_str(&text.replace('"', "\"\""));
    out.push('"');
}

/// The properties `--narrow` keeps, in the order they are written.
pub const NARROW: [&str; 19] = [
    "ExchangeGuid",
    "DisplayName",
    "PrimarySmtpAddress",
    "UserPrincipalName",
    "WhenSoftDeleted",
    "IsInactiveMailbox",
    "LitigationHoldEnabled",
    "InPlaceHolds",
    "ComplianceTagHoldApplied",
    "DelayHoldApplied",
    "DelayReleaseHoldApplied",
    "AutoExpandingArchiveEnabled",
    "ArchiveStatus",
    "ExternalDirectoryObjectId",
    "TotalItemSize",
    "ItemCount",
    "LicenseType",
    "CustomAttribute1",
    "CustomAttribute2",
];

fn usage() -> ! {
    eprintln!("usage: gen_export COUNT OUTPUT [--format json|csv] [--narrow]");
    std::process::exit(2);
}

/// Writes `count` records as ConvertTo-Json (`csv == false`) or Export-Csv output.
///
/// Public so that the benchmarks can include this file and parse the same data.
pub fn generate(count: u64, csv: bool, w: &mut impl Write) -> std::io::Result<()> {
    generate_with(count, csv, false, w)
}

/// [`generate`], with only the [`NARROW`] properties when `narrow`.
pub fn generate_with(
    count: u64,
    csv: bool,
    narrow: bool,
    w: &mut impl Write,
) -> std::io::Result<()> {
    let mut rng = Rng(0x1aa_5eed_2025);
    let mut buf = String::with_capacity(64 * 1024);
    if csv {
        w.write_all(
            b"#TYPE Deserialized.Microsoft.Exchange.Data.Directory.Management.Mailbox\r\n",
        )?;
    } else {
        w.write_all(b"[\n")?;
    }
    for i in 0..count {
        let mut rec = record(i, &mut rng);
        if narrow {
            rec = NARROW
                .iter()
                .map(|name| {
                    let at = rec
                        .iter()
                        .position(|(n, _)| n == name)
                        .expect("every narrow property is in a full record");
                    rec.swap_remove(at)
                })
                .collect();
        }
        buf.clear();
        if csv {
            if i == 0 {
                let header: Vec<String> = rec.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                buf.push_str(&header.join(","));
                buf.push_str("\r\n");
            }
            for (j, (_, val)) in rec.iter().enumerate() {
                if j > 0 {
                    buf.push(',');
                }
                csv_cell(&mut buf, val);
            }
            buf.push_str("\r\n");
        } else {
            write_json_record(&mut buf, &rec, i + 1 == count);
        }
        w.write_all(buf.as_bytes())?;
    }
    if !csv {
        w.write_all(b"]\n")?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut format = String::from("json");
    let mut narrow = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--narrow" => narrow = true,
            "--format" => format = args.next().unwrap_or_else(|| usage()),
            f if f.starts_with("--format=") => format = f["--format=".len()..].to_string(),
            "-h" | "--help" => usage(),
            _ => positional.push(a),
        }
    }
    let [count, output] = positional.as_slice() else {
        usage()
    };
    let count: u64 = count.parse().unwrap_or_else(|_| usage());
    let output = PathBuf::from(output);
    let csv = match format.as_str() {
        "json" => false,
        "csv" => true,
        _ => usage(),
    };
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&output)?);
    generate_with(count, csv, narrow, &mut w)?;
    w.flush()?;
    eprintln!(
        "wrote {count} record(s) ({}{}) to {}",
        if csv { "Export-Csv" } else { "ConvertTo-Json" },
        if narrow { ", 19 properties" } else { "" },
        output.display()
    );
    Ok(())
}
