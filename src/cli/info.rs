use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(gpu: &crate::Gpu, args: &Args) -> Result<()> {
    let s = gpu.summary();
    if args.json {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    println!("adapter      {}", s.name);
    println!("backend      {} ({})", s.backend, s.device_type);
    println!("driver       {} {}", s.driver, s.driver_info);
    println!("features     {}", if s.features.is_empty() { "(baseline)".to_string() } else { s.features.join(", ") });
    println!("max buffer   {} MiB (binding {} MiB)", s.max_buffer_size >> 20, s.max_storage_buffer_binding_size >> 20);
    println!(
        "workgroup    {} B shared, {} invocations, size {:?}",
        s.max_compute_workgroup_storage_size, s.max_compute_invocations_per_workgroup, s.max_compute_workgroup_size
    );
    println!("dispatch     {} workgroups per dimension", s.max_compute_workgroups_per_dimension);
    println!("subgroups    {}..{}", s.subgroup_min_size, s.subgroup_max_size);
    println!("loop budget  {} iterations per invocation (lavapipe's silent limit, enforced everywhere)", s.loop_budget);
    Ok(())
}
