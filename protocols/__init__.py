"""Liquid-property protocols (installed as ``allscaip.protocols``): density and heat of
vaporization from equilibrated liquid (NPT) and gas (NVT) runs, with error bars.

Modules: ``molecules`` (built-in water, PDB/SDF/XYZ files, charge/spin checks), ``boxes``
(packmol), ``engines`` / ``lammps_engine`` (OpenMM and LAMMPS phases with checkpoints),
``analysis`` (equilibration detection over replicas, statistical inefficiency, ΔHvap), ``rdf``,
``plots``, ``report``, ``refdata`` (``data/*.csv``), ``settings``, ``protocol`` (the
driver) and ``cli`` (``allscaip protocol density|hvap|liquid``).
"""
