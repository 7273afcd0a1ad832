// The step both tile products take (common/coop_tile.wgsl, common/simt_tile.wgsl): the columns
// fetched last step go into the tiles, the next step's loads are issued (so that they are in
// flight while the tiles are multiplied), and the tiles are ready. The includer defines Fetch,
// fetch(lid, step) and stash(lid, f). Called from uniform control flow.
fn tile_step(lid: u32, f: ptr<function, Fetch>, s: u32, steps: u32) {
    workgroupBarrier();
    stash(lid, *f);
    if s + 1u < steps {
        *f = fetch(lid, s + 1u);
    }
    workgroupBarrier();
}
