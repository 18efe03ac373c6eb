// Migrations are embedded with include_str!; new files must trigger a rebuild.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
